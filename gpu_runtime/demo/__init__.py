"""The demo chat model: a synthetic world, its tokenizer, a tiny Llama, and the cached builder.

Submodules are imported on demand (`gpu_runtime.demo.world` needs no torch; `build` does).
"""
