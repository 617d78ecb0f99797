"""Fused inference path: BatchNorm folded into the convolution before it, the activation fused into the convolution,
channels-last memory, inference mode.

In evaluation BatchNorm is a per-channel affine map ``y = γ (x − μ) / √(σ² + ε) + β``; following a convolution it
folds into that convolution's weights and bias, removing one full read and write of every feature map. The ReLU6
(or ReLU) after a convolution is then applied inside the convolution's oneDNN primitive as a post-op
(``torch.ops.mkldnn._convolution_pointwise``, the kernel ``torch.compile`` emits for the same pattern on CPU), which
removes another pass. Channels-last (NHWC) is the layout oneDNN's depthwise and 1×1 kernels prefer on CPU, so no
reorders run between layers; SSDLite's head flattening ``(N, A·K, h, w) → (N, h·w·A, K)`` also becomes a view.
``torch.inference_mode`` skips autograd bookkeeping. Without oneDNN the convolutions fall back to ``F.conv2d`` and
the activation module.

``fuse_for_inference`` works on a copy and keeps the model's own class and methods (``anchors``, ``num_classes``…)
reachable through the returned wrapper, so the tools can swap it in with one line.

``freeze_for_cpu`` (the predictor's CPU default) goes one step further for a fixed input shape: each fused
convolution's weight is prepacked into oneDNN's blocked layout (``PackedConvAct``) and the model is traced and frozen
into a TorchScript graph, so no Python runs per layer and no weight is reordered per call.
"""
from __future__ import annotations

import copy
import functools
import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm", "ConvAct", "fuse_activations", "InferenceModel", "fuse_for_inference", "PackedConvAct",
           "pack_convolutions", "freeze_folded", "freeze_for_cpu"]

# Activation modules a convolution can absorb → (oneDNN post-op name, its scalars).
_POST_OPS: dict[type, tuple[str, list[float]]] = {nn.ReLU6: ("hardtanh", [0.0, 6.0]), nn.ReLU: ("relu", [])}
_HAS_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def fold_batchnorm(model: nn.Module) -> tuple[int, int]:
    """Fold, in place, every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential``.

    The BatchNorm is replaced by ``nn.Identity`` (so module indices, and code that addresses ``seq[i]``, stay
    valid) and the convolution gains a bias. The model must be in eval mode: folding uses the running statistics.
    Returns ``(folded, left)``: the number of BatchNorms folded and of those that could not be (e.g. the
    pre-activation ablation's BN → ReLU6 → conv, which has no convolution before it).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (it folds the running statistics)")
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for prev_name, name in zip(names, names[1:]):
            conv, bn = module._modules[prev_name], module._modules[name]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and bn.running_mean is not None and conv.out_channels == bn.num_features):
                module._modules[prev_name] = fuse_conv_bn_eval(conv, bn)
                module._modules[name] = nn.Identity()
                folded += 1
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return folded, left


class ConvAct(nn.Module):
    """A 2-D convolution with an optional ReLU/ReLU6 applied in the same oneDNN primitive (inference only).

    Args:
        conv: the convolution (its parameters are shared, not copied).
        activation: the activation module it absorbs, or ``None``.
    """

    def __init__(self, conv: nn.Conv2d, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups = conv.groups
        self.post_op, self.scalars = _POST_OPS[type(activation)] if activation is not None else ("none", [])

    def forward(self, x: Tensor) -> Tensor:
        if _HAS_POINTWISE and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                           self.dilation, self.groups, self.post_op, self.scalars, "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.post_op == "hardtanh":
            return F.hardtanh_(y, *self.scalars)
        return F.relu_(y) if self.post_op == "relu" else y


def _fusable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and conv.weight.dtype == torch.float32)


def fuse_activations(model: nn.Module) -> int:
    """Replace, in place, every plain ``Conv2d`` by a ``ConvAct``; one followed in its ``nn.Sequential`` by a
    ReLU/ReLU6 (BatchNorms already folded, i.e. ``nn.Identity``, in between) absorbs it, the activation becoming
    ``nn.Identity``. Returns the number of activations absorbed."""
    absorbed = 0
    todo = [(parent, name) for parent in model.modules() for name, child in parent._modules.items()
            if _fusable(child)]
    for parent, name in todo:
        conv, activation = parent._modules[name], None
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for later in names[names.index(name) + 1:]:
                nxt = parent._modules[later]
                if isinstance(nxt, nn.Identity):
                    continue
                if type(nxt) in _POST_OPS:
                    activation = nxt
                    parent._modules[later] = nn.Identity()
                    absorbed += 1
                break
        parent._modules[name] = ConvAct(conv, activation)
    return absorbed


class InferenceModel(nn.Module):
    """Runs ``model`` under ``torch.inference_mode`` on channels-last input; other attributes are the model's.

    Outputs are inference tensors: they can be read, sliced and fed to further computation, but not modified in
    place outside inference mode or used in autograd.
    """

    def __init__(self, model: nn.Module, channels_last: bool = True) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last

    def forward(self, images: Tensor):
        with torch.inference_mode():
            if self.channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            return self.model(images)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Delegation keeps model-specific API (SSDLite.anchors, num_classes, ...) usable on the wrapper.
            return getattr(self._modules["model"], name)


def fuse_for_inference(model: nn.Module, channels_last: bool = True) -> InferenceModel:
    """A fused inference copy of ``model`` (the original is left untouched): BN folded, activations fused into the
    convolutions, channels-last weights, inference mode. Outputs equal the eval-mode model's to float rounding."""
    fused = copy.deepcopy(model).eval()
    for p in fused.parameters():
        p.requires_grad_(False)
    fold_batchnorm(fused)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    fuse_activations(fused)
    return InferenceModel(fused, channels_last).eval()


# TorchScript can trace neither the oneDNN post-op convolution (its ``Scalar?[]`` argument) nor a call that passes it
# a Python list, but it can call a scripted function that does: the traced graph records the call, freezing inlines
# it, and the graph then holds the fused convolutions with their prepacked weights as constants.
_POINTWISE_SRC = """
def conv_none(x: Tensor, w: Tensor, b: Optional[Tensor], padding: List[int], stride: List[int],
              dilation: List[int], groups: int) -> Tensor:
    scalars: List[Optional[number]] = []
    return torch.ops.mkldnn._convolution_pointwise(x, w, b, padding, stride, dilation, groups, "none", scalars, "")

def conv_relu(x: Tensor, w: Tensor, b: Optional[Tensor], padding: List[int], stride: List[int],
              dilation: List[int], groups: int) -> Tensor:
    scalars: List[Optional[number]] = []
    return torch.ops.mkldnn._convolution_pointwise(x, w, b, padding, stride, dilation, groups, "relu", scalars, "")

def conv_hardtanh(x: Tensor, w: Tensor, b: Optional[Tensor], padding: List[int], stride: List[int],
                  dilation: List[int], groups: int, low: float, high: float) -> Tensor:
    scalars: List[Optional[number]] = [low, high]
    return torch.ops.mkldnn._convolution_pointwise(x, w, b, padding, stride, dilation, groups, "hardtanh", scalars,
                                                   "")
"""


@functools.cache
def _pointwise_functions() -> torch.jit.CompilationUnit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        return torch.jit.CompilationUnit(_POINTWISE_SRC)


class PackedConvAct(nn.Module):
    """A ``ConvAct`` whose weight is prepacked into the blocked layout oneDNN picks for one input shape, called
    through a scripted function so that ``torch.jit.trace`` records it (CPU, float32, oneDNN only).

    oneDNN reorders a plain (OIHW) weight into its blocked layout on every call; packing once removes that work and
    lets 1×1 convolutions on small maps skip ATen's native fallback (``_slow_conv2d_forward``), which ATen picks for
    batch-1 inputs under 20480 elements. The packed weight only serves inputs shaped ``input_size`` on as many
    intra-op threads as were set when it was packed (oneDNN picks the layout for both; measured: SSDLite packed for
    2 threads runs ~4× slower on 1, with every output still right).

    Args:
        conv: the fused convolution (its weight is copied into the packed layout).
        input_size: the ``(N, C, H, W)`` input shape the packing is chosen for.
    """

    def __init__(self, conv: ConvAct, input_size: list[int]) -> None:
        super().__init__()
        w = torch.ops.mkldnn._reorder_convolution_weight(conv.weight.detach(), conv.padding, conv.stride,
                                                         conv.dilation, conv.groups, list(input_size))
        self.register_buffer("weight", w)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.post_op, self.scalars = conv.post_op, list(conv.scalars)
        self.input_size = list(input_size)

    def forward(self, x: Tensor) -> Tensor:
        f = _pointwise_functions()
        args = (x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)
        if self.post_op == "hardtanh":
            return f.conv_hardtanh(*args, *self.scalars)
        return (f.conv_relu if self.post_op == "relu" else f.conv_none)(*args)


def pack_convolutions(fused: InferenceModel, example: Tensor) -> int:
    """Replace, in place, every ``ConvAct`` of a ``fuse_for_inference`` model by a ``PackedConvAct`` packed for the
    input shape it sees when the model runs on ``example`` (a CPU float32 batch). Returns the number replaced."""
    sizes: dict[nn.Module, list[int]] = {}
    convs = [m for m in fused.modules() if isinstance(m, ConvAct)]
    hooks = [m.register_forward_pre_hook(lambda m, args: sizes.__setitem__(m, list(args[0].shape))) for m in convs]
    try:
        fused(example)
    finally:
        for h in hooks:
            h.remove()
    packed = 0
    for parent in list(fused.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, ConvAct) and child in sizes:
                parent._modules[name] = PackedConvAct(child, sizes[child])
                packed += 1
    return packed


def _trace_and_freeze(module: nn.Module, x: Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.compile, whose compile takes minutes on a CPU; the traced
        # graph is an accelerator here, with the eager model as the fallback (the predictor), not a design target.
        warnings.simplefilter("ignore")
        graph = torch.jit.freeze(torch.jit.trace(module, x, strict=False, check_trace=False))
        graph(x)  # the first calls specialise the graph (profiling executor): done here, not at the first image
        graph(x)
    return graph


def freeze_folded(model: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    """A frozen TorchScript graph of ``model`` with BatchNorm folded, channels-last, activations separate: the recipe
    of the popular MobileNetV2-SSDLite's frozen TorchScript, and ``freeze_for_cpu``'s fallback without oneDNN."""
    folded = copy.deepcopy(model).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    fold_batchnorm(folded)
    folded = folded.to(memory_format=torch.channels_last)
    return _trace_and_freeze(folded, example.contiguous(memory_format=torch.channels_last))


def freeze_for_cpu(model: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    """A frozen TorchScript graph of ``model`` for channels-last inputs shaped like ``example``: BatchNorm folded,
    each ReLU/ReLU6 fused into its convolution as a oneDNN post-op, every convolution's weight prepacked for its
    input shape (``PackedConvAct``), weights frozen as constants — what Inductor's CPU freezing emits for this
    network, without its compile time. Without oneDNN's post-op convolution (or for a non-float32 / non-CPU
    ``example``) it is ``freeze_folded``'s graph. The graph returns what ``model`` returns (dicts of tensors
    included), equals the eval-mode model to float rounding and serves only ``example``'s shape at the current
    ``torch.get_num_threads()`` (see ``PackedConvAct``).
    """
    if not (_HAS_POINTWISE and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
            and example.device.type == "cpu" and example.dtype == torch.float32):
        return freeze_folded(model, example)
    fused = fuse_for_inference(model, channels_last=True)
    x = example.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        pack_convolutions(fused, x)
    return _trace_and_freeze(fused.model, x)
