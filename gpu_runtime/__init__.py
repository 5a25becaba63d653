"""GPU runtime: torch/transformers/peft code (demo model, unlearning pipeline, arq worker, inference engine)."""
