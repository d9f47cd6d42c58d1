"""Replays on a model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Under FSDP2 every ``fully_shard``-ed module holds its parameters as sharded DTensors and gathers
them (all-gather) in a forward pre-hook, putting the full tensors in place of the shards until
its post-hook frees them again. The replay needs the *full* tensors of the last decoder block and
of the tail (final norm, LM head) for two reasons:

* the zeroth-order perturbations ``θ ± εz`` and the exact features' leaf copies are computed from
  the parameters themselves, which must be full tensors, not this rank's shard;
* ``functional_call`` substitutes tensors by setting module attributes before the forward. If
  FSDP then gathered the block in its pre-hook, it would set its own full parameters over the
  substitutes and every perturbation would silently be lost (zero coefficients).

So :class:`GatheredTail` keeps exactly those modules gathered from the capture to the end of the
replays, and runs the replays with FSDP's hooks of those modules taken off. The capture itself is
an ordinary FSDP forward that runs to the end (a forward stopped by an exception would leave FSDP's
root mid-forward): every block is gathered by FSDP one at a time, layer L-2 is resharded before
the last block is gathered, and the last block simply stays gathered afterwards. The scoring pass
therefore all-gathers what one forward does (each block once, the root once) and nothing more: at
no moment are two decoder blocks gathered. The price is that on a sharded model the capture runs
the last layer (and the LM head on one position per row) once, which the unsharded capture skips.

What is gathered in the tail is the last block and every FSDP module holding replayed parameters
outside the decoder stack: in the usual layout (``fully_shard`` per decoder layer, then on the
whole model) that is the root group (embeddings, final norm, LM head), which every forward gathers
anyway and which FSDP2 keeps gathered after the forward by default.

Why FSDP's hooks must be off during the replays, not only the block gathered: with them on, an
exact-features backward through a replay fires FSDP's pre-backward hooks, which prefetch the
block before the last one (gathering a second block: measured) and end with a callback that
reshards everything.

Beyond the public ``FSDPModule`` API (``unshard``, ``reshard``, ``set_reshard_after_forward``)
this reads FSDP2 internals: the module's FSDP state, its parameter groups' post-forward mesh (no
getter exists for reshard-after-forward) and its forward-hook handles. Written against torch
2.13; the 2-process tests in test_distributed.py fail if a torch release changes them.

Without FSDP (a plain or DDP model) everything here is a no-op.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import nn

try:  # FSDP2 is public from torch 2.6; an older torch simply has no sharded models to handle
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - depends on the torch build
    FSDPModule = None  # type: ignore[assignment,misc]


def is_fsdp_module(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module`` itself."""
    return FSDPModule is not None and isinstance(module, FSDPModule)


def is_sharded(model: nn.Module) -> bool:
    """Whether any module of ``model`` is sharded with FSDP2."""
    return FSDPModule is not None and any(isinstance(m, FSDPModule) for m in model.modules())


def tail_fsdp_modules(model: nn.Module, stack_path: str, last_prefix: str) -> list[tuple[nn.Module, bool]]:
    """The FSDP modules whose parameters a replay substitutes or reads, each with whether it is a
    root (no FSDP module above it): the last decoder block (or FSDP modules inside it) and those
    outside the decoder stack (the root, a separately sharded head or norm). Modules of layers
    ``0..L-2`` are never included."""
    names = [name for name, module in model.named_modules() if is_fsdp_module(module)]
    out = []
    for name, module in model.named_modules():
        if not is_fsdp_module(module):
            continue
        inside_stack = name == stack_path or name.startswith(f"{stack_path}.")
        in_last_block = f"{name}.".startswith(last_prefix)
        if inside_stack and not in_last_block:
            continue  # layers 0..L-2 (or the whole list): FSDP gathers them during the capture
        root = not any(other != name and (other == "" or name.startswith(f"{other}.")) for other in names)
        out.append((module, root))
    return out


def _reshards_after_forward(module: nn.Module) -> bool:
    # FSDP2 exposes a setter but no getter; a group reshards after forward exactly when it has a
    # post-forward mesh (see FSDPParamGroup._reshard_after_forward).
    groups = module._get_fsdp_state()._fsdp_param_groups
    return any(group.post_forward_mesh_info is not None for group in groups)


def _fsdp_hook_ids(module: nn.Module) -> tuple[int, int]:
    """Ids of the forward pre-hook and forward hook ``fully_shard(module)`` registered."""
    state = module._get_fsdp_state()
    pre, post = getattr(state, "_pre_forward_hook_handle", None), getattr(state, "_post_forward_hook_handle", None)
    if pre is None or post is None or pre.id not in module._forward_pre_hooks or post.id not in module._forward_hooks:
        raise NotImplementedError(
            f"{type(module).__name__} was sharded in a way colm's last-layer replay does not handle "
            "(e.g. grouped fully_shard([a, b])); apply fully_shard to each decoder layer and then to "
            "the whole model, as accelerate's FSDP2 TRANSFORMER_BASED_WRAP does"
        )
    return pre.id, post.id


class GatheredTail:
    """The replayed FSDP modules, gathered from the capture to :meth:`release`.

    Sequence (``LastLayerReplay`` drives it):

    1. :meth:`prepare`, before the capture: these modules stop resharding after forward, so the
       capture's ordinary FSDP forward leaves them gathered (the last block is gathered once, by
       FSDP's own hook, after layer L-2 was resharded: one block at a time);
    2. :meth:`suspended` around every replay: FSDP's forward hooks on these modules are taken
       off, so FSDP sees neither the replays nor a backward through them (exact features) and
       cannot set its own tensors over ``functional_call``'s substitutes, prefetch another block
       in a backward, or record the replays in its forward order;
    3. :meth:`release`: hooks and settings restored, the last block resharded.
    """

    def __init__(self, modules: Iterable[tuple[nn.Module, bool]]) -> None:
        found = list(modules)
        self.modules = [module for module, _ in found]
        # FSDP2 keeps a root gathered after forward on its own (and decides it only at its first
        # forward): roots are gathered and resharded by FSDP, their setting is never touched
        self._settable = [module for module, root in found if not root]
        self._restore: dict[int, bool] | None = None

    @property
    def active(self) -> bool:
        return bool(self.modules)

    def prepare(self) -> None:
        if not self.modules or self._restore is not None:
            return
        self._restore = {}
        for module in self._settable:
            self._restore[id(module)] = _reshards_after_forward(module)
            module.set_reshard_after_forward(False, recurse=False)  # only this module

    def gather(self) -> None:
        """Make sure the modules are gathered (a no-op after the capture's forward)."""
        self.prepare()
        for module in self.modules:
            module.unshard()  # no-op when already gathered

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """FSDP's forward hooks of the gathered modules removed inside the block."""
        if not self.modules:
            yield
            return
        self.gather()
        taken = []
        for module in self.modules:
            pre_id, post_id = _fsdp_hook_ids(module)
            taken.append((module, pre_id, module._forward_pre_hooks.pop(pre_id),
                          post_id, module._forward_hooks.pop(post_id)))
        try:
            yield
        finally:
            for module, pre_id, pre, post_id, post in taken:
                module._forward_pre_hooks[pre_id] = pre
                module._forward_pre_hooks.move_to_end(pre_id, last=False)  # FSDP's runs first
                module._forward_hooks[post_id] = post

    def release(self) -> None:
        """Restore the reshard-after-forward settings and reshard the modules that reshard after
        forward (the last block). The root is left to FSDP (which keeps it gathered)."""
        if self._restore is None:
            return
        for module in self._settable:
            again = self._restore[id(module)]
            module.set_reshard_after_forward(again, recurse=False)
            if again:
                module.reshard()
        self._restore = None
