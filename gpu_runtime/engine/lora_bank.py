"""Stacked multi-LoRA: every loaded adapter's weights per target module in one tensor, applied per row.

peft's ``adapter_names`` path loops over the adapters in a batch inside every LoRA layer (gather,
two matmuls, scatter per adapter), so its cost grows with the number of distinct adapters. Here
each LoRA-wrapped linear keeps ``A`` as [slots, in, r] and ``B * scaling`` as [slots, r, out]
(slot 0 stays zero, for base rows); a forward hook gathers each row's slot and adds
``bmm(bmm(x, A[slot]), B[slot])`` to the base output: a fixed handful of ops per layer whatever
the adapter mix (the idea behind Punica/S-LoRA's batched kernels, in plain torch).

Slots are assigned per adapter and written in place on load, so loading costs one adapter's
copy, not a restack of all of them. Used only while every LoRA layer is a plain ``lora.Linear``
without variants (DoRA, aLoRA, ...) or LoRA bias; otherwise the engine uses peft's
``adapter_names``. peft's own LoRA layers are switched off while the bank is in use, so each
delta is added exactly once.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch.utils.hooks import RemovableHandle


class _Stack:
    __slots__ = ("a", "b")

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a = a  # [slots, in, r]
        self.b = b  # [slots, r, out], scaling folded in


class LoraBank:
    """Stacked LoRA weights of the loaded adapters, applied per row by forward hooks."""

    def __init__(self, slots: int) -> None:
        self.enabled = False
        self._n_slots = slots + 1  # slot 0: base rows
        self.slots: dict[str, int] = {}
        self._stacks: dict[int, _Stack] = {}  # id(module) -> stack
        self._hooks: dict[int, RemovableHandle] = {}
        # Per forward: row -> slot, or one slot for the whole batch; both None: no LoRA this step.
        self._rows: torch.Tensor | None = None
        self._single: int | None = None

    @staticmethod
    def _lora_layers(model: torch.nn.Module) -> list[LoraLayer]:
        return [m for m in model.modules() if isinstance(m, LoraLayer)]

    @staticmethod
    def _layer_ok(m: LoraLayer) -> bool:
        return (
            isinstance(m, LoraLinear)
            and not m.lora_variant
            and not any(m.lora_bias.values())
            and not len(m.lora_embedding_A)
            and not m.merged
        )

    def sync(self, model: torch.nn.Module, use_bank: bool) -> None:
        """Bring the bank in line with the adapters in ``model`` (after every load/unload, under the model lock)."""
        layers = self._lora_layers(model) if isinstance(model, PeftModel) else []
        names = list(getattr(model, "peft_config", {}))
        enabled = use_bank and bool(names) and all(self._layer_ok(m) for m in layers)
        for m in layers:
            # Exactly one of the two paths adds the LoRA delta; only touch layers whose state changes.
            if m.disable_adapters != enabled:
                m.enable_adapters(not enabled)
        if not enabled:
            self.enabled = False
            self._stacks.clear()
            self.slots = {}
            return
        if not self.enabled:
            self._stacks.clear()
            self.slots = {}
        self.enabled = True
        for gone in [n for n in self.slots if n not in names]:
            self._clear(self.slots.pop(gone))
        for name in names:
            if name not in self.slots:
                self._add(layers, name)

    def _free_slot(self) -> int:
        used = set(self.slots.values())
        for s in range(1, self._n_slots):
            if s not in used:
                return s
        # More adapters than planned (retiring ones still in flight): grow every stack.
        self._n_slots *= 2
        for st in self._stacks.values():
            st.a = torch.cat([st.a, st.a.new_zeros((self._n_slots - st.a.shape[0], *st.a.shape[1:]))])
            st.b = torch.cat([st.b, st.b.new_zeros((self._n_slots - st.b.shape[0], *st.b.shape[1:]))])
        return self._free_slot()

    def _add(self, layers: list[LoraLayer], name: str) -> None:
        slot = self._free_slot()
        self.slots[name] = slot
        for m in layers:
            if name not in m.lora_A:
                continue
            wa, wb = m.lora_A[name].weight, m.lora_B[name].weight  # [r, in], [out, r]
            rank = wa.shape[0]
            st = self._stacks.get(id(m))
            if st is None or st.a.shape[2] < rank:
                old = st
                st = _Stack(
                    wa.new_zeros((self._n_slots, wa.shape[1], rank)),
                    wa.new_zeros((self._n_slots, rank, wb.shape[0])),
                )
                if old is not None:  # grow the rank dimension, keeping the other adapters
                    r0 = old.a.shape[2]
                    st.a[:, :, :r0] = old.a
                    st.b[:, :r0, :] = old.b
                self._stacks[id(m)] = st
            st.a[slot].zero_()
            st.b[slot].zero_()
            st.a[slot, :, :rank] = wa.t()
            st.b[slot, :rank, :] = (wb * m.scaling[name]).t()
            if id(m) not in self._hooks:
                self._hooks[id(m)] = m.register_forward_hook(self._hook)

    def _clear(self, slot: int) -> None:
        for st in self._stacks.values():
            st.a[slot].zero_()
            st.b[slot].zero_()

    def set_rows(self, names: list[str], device: torch.device) -> None:
        """Choose each row's adapter for the next forward pass (unknown names, e.g. ``"__base__"``: none)."""
        slots = [self.slots.get(n, 0) for n in names]
        distinct = set(slots)
        self._rows = None
        self._single = None
        if distinct == {0}:
            return
        if len(distinct) == 1:
            self._single = slots[0]
        else:
            self._rows = torch.tensor(slots, dtype=torch.long, device=device)

    def _hook(
        self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if not self.enabled or (self._rows is None and self._single is None):
            return None
        stack = self._stacks.get(id(module))
        if stack is None:
            return None
        x = args[0]
        # Fused add (addmm / baddbmm): on small matrices the op count, not the FLOPs, is the cost.
        if self._single is not None:
            h = x.reshape(-1, x.shape[-1]) @ stack.a[self._single]
            out = torch.addmm(output.reshape(-1, output.shape[-1]), h, stack.b[self._single])
            return out.reshape(output.shape)
        rows = self._rows
        assert rows is not None
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [batch, tokens, in]
        h = torch.bmm(flat, stack.a.index_select(0, rows))
        out = torch.baddbmm(
            output.reshape(x.shape[0], -1, output.shape[-1]), h, stack.b.index_select(0, rows)
        )
        return out.reshape(output.shape)
