"""Inference engines: one trained model run by PyTorch, ONNX Runtime or OpenVINO.

Scene inference (:mod:`pixeldino.predict`) hands each batch of normalised patches to an :class:`Engine` and gets the
RTS and pseudo-class logits back. Which engine runs is ``predict.backend``:

* ``torch``: the model itself, ``channels_last`` (and bf16 autocast on CUDA); the only engine on a GPU.
* ``onnxruntime`` / ``openvino``: the model exported once to ONNX (OpenVINO: converted once more to its IR) and run
  on the CPU, so that probabilities agree with torch's to about 1e-6.
* ``auto`` (the default): torch on a GPU; on the CPU the fastest one installed, ONNX Runtime, then OpenVINO, then
  torch (in bfloat16: OpenVINO, then torch). Both are optional (``pip install 'pixeldino[engines]'``).

``predict.precision``: ``auto`` (the default) is bfloat16 on a GPU (autocast, as always) and float32 on the CPU.
``bfloat16`` on the CPU (torch autocast, or OpenVINO's bf16 inference precision; not ONNX Runtime) is 1.5-3x faster
on CPUs with AVX-512-BF16 or AMX but moves probabilities by up to about 1e-2 (OpenVINO picks bf16 by itself on such
CPUs; here it only does when asked).

Export happens once per model and input shape, not once per scene job: the files are cached beside the model file,
in ``<model>.engines/`` (``model/model.safetensors`` -> ``model/model.engines/``), named by the model id (the hash of
its weights, so a retrained model never meets a stale export) and the input shape; when that folder cannot be
written (a read-only model directory) the user cache ``$XDG_CACHE_HOME/pixeldino/engines`` is used instead. Each
file is written under a temporary name and renamed when complete, so scene jobs that race to export the same
model never see half a file; the loser's copy is discarded.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pixeldino.errors import ConfigError, ModelError

if TYPE_CHECKING:  # torch is imported lazily: the CLI reads BACKENDS without paying for it
    import torch

    from pixeldino.model import UNet

log = logging.getLogger(__name__)

#: ``predict.backend`` values; ``auto`` picks one for the device (see module docs).
Backend = Literal["auto", "torch", "onnxruntime", "openvino"]
BACKENDS: tuple[str, ...] = get_args(Backend)
DEFAULT_BACKEND: Backend = "auto"
#: Exported engines, fastest scene inference first on the CPU in float32 (measured side by side in BENCHMARKS.md,
#: "Inference engines": ONNX Runtime ahead of or level with OpenVINO in every run, on two CPUs); CPU only.
CPU_ENGINES = ("onnxruntime", "openvino")
#: ONNX opset of the export: LayerNormalization-free graph, readable by ONNX Runtime >= 1.14 and OpenVINO >= 2023.
ONNX_OPSET = 18
INPUT_NAME = "x"
OUTPUT_NAMES = ("rts", "pseudo")
_EXPORT_MODULES = ("onnx", "onnxscript")  # what torch.onnx.export(dynamo=True) needs
#: ``predict.precision`` values; ``auto``: bfloat16 on a GPU, float32 on the CPU.
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DEFAULT_PRECISION: Precision = "auto"
_BF16_ENGINES = ("torch", "openvino")


def installed(module: str) -> bool:
    """Whether a Python package can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def resolve_precision(precision: str, backend: str, device: torch.device) -> str:
    """``float32`` or ``bfloat16`` for ``predict.precision`` on this engine and device.

    Raises:
        ConfigError: unknown precision, or bfloat16 asked of an engine that runs float32 only.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"predict precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if precision == "bfloat16" and backend not in _BF16_ENGINES:
        raise ConfigError(
            f"predict backend {backend!r} runs in float32 only; use precision 'float32' or 'auto', "
            f"or backend {' or '.join(repr(b) for b in _BF16_ENGINES)} for bfloat16"
        )
    return precision


def resolve_engine(backend: str, device: str, precision: str = DEFAULT_PRECISION) -> tuple[str, torch.device]:
    """The engine to run and its device for ``predict.backend``, ``predict.device`` (and ``predict.precision``).

    ``auto`` picks torch on a GPU, else the first installed of :data:`CPU_ENGINES` (that runs ``precision``), else
    torch. An exported engine always runs on the CPU (``device: auto`` then means the CPU, even with a GPU).

    Raises:
        ConfigError: unknown backend, an exported engine asked to run on a GPU, or an engine that is not installed.
    """
    from pixeldino.model import resolve_device

    if backend not in BACKENDS:
        raise ConfigError(f"predict backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend in CPU_ENGINES:
        dev = resolve_device("cpu" if device == "auto" else device, "predict device")
        if dev.type != "cpu":
            raise ConfigError(
                f"predict backend {backend!r} runs on the CPU but the device is {device!r}; "
                "use backend 'torch' or 'auto' on a GPU, or device 'cpu'"
            )
        missing = [m for m in (backend, *_EXPORT_MODULES) if not installed(m)]
        if missing:
            raise ConfigError(
                f"predict backend {backend!r} needs the package(s) {', '.join(missing)}; "
                "pip install 'pixeldino[engines]' (or conda install -c conda-forge onnx onnxscript onnxruntime "
                "openvino), or use backend 'auto' or 'torch'"
            )
        return backend, dev
    dev = resolve_device(device, "predict device")
    if backend == "auto" and dev.type == "cpu":
        for name in CPU_ENGINES:
            if precision == "bfloat16" and name not in _BF16_ENGINES:
                continue
            if all(installed(m) for m in (name, *_EXPORT_MODULES)):
                return name, dev
    return "torch", dev


class Engine:
    """Runs a batch of normalised patches: ``engine(x)`` with ``x`` a ``(B, C, P, P)`` float32 tensor on
    :attr:`device` returns ``(rts_logits (B, 1, P, P), pseudo_logits (B, K, P, P))``, float32, on :attr:`device`.

    The outputs may be views of the engine's own buffers: they are valid until the next call (clone to keep them).
    """

    name = "engine"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class TorchEngine(Engine):
    """The PyTorch model, ``channels_last`` (faster convolutions on CPU and GPU), bf16 autocast if asked."""

    name = "torch"

    def __init__(self, model: UNet, device: torch.device, precision: str = "float32") -> None:
        import torch

        super().__init__(device)
        self.model = model.to(device=device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        self.bf16 = precision == "bfloat16"

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        with (
            torch.inference_mode(),
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            rts, pseudo = self.model(x.contiguous(memory_format=torch.channels_last))
        return rts.float(), pseudo.float()


class OnnxRuntimeEngine(Engine):
    """The exported ONNX model in ONNX Runtime's CPU execution provider (any batch size)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, num_threads: int | None) -> None:
        import onnxruntime as ort
        import torch

        super().__init__(torch.device("cpu"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or 0  # 0: ONNX Runtime's default (the physical cores)
        options.inter_op_num_threads = 1  # one branch-free graph: parallelism is inside the operators
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # no busy-waiting between calls: the other dask worker reads and blends on the same cores meanwhile
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for unreadable files
            raise ModelError(f"{onnx_path}: cannot load the exported model ({exc}); delete it to export again") from exc

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        rts, pseudo = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.contiguous().numpy()})
        return torch.from_numpy(rts), torch.from_numpy(pseudo)


class OpenVinoEngine(Engine):
    """The model in OpenVINO's IR on its CPU plugin, compiled for one precision.

    Full batches run on a model compiled for a static batch of ``batch_size`` (the fastest form on the CPU plugin);
    the smaller last batch of a block runs on a second one, compiled on first use with a batch bounded by
    ``batch_size``, so that it costs its own size rather than a full batch of zero padding (BENCHMARKS.md,
    "Inference engines").
    """

    name = "openvino"

    def __init__(self, ir_path: Path, batch_size: int, num_threads: int | None, precision: str = "float32") -> None:
        import openvino as ov
        import torch

        super().__init__(torch.device("cpu"))
        self._core = ov.Core()
        try:
            self._ir = self._core.read_model(str(ir_path))
        except Exception as exc:
            raise ModelError(f"{ir_path}: cannot load the exported model ({exc}); delete it to export again") from exc
        self._config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": {"float32": "f32", "bfloat16": "bf16"}[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if num_threads:
            self._config["INFERENCE_NUM_THREADS"] = int(num_threads)
        self.batch_size = batch_size
        self._full = self._compile(batch_size)
        self._partial: Any = None

    def _compile(self, batch: Any) -> Any:
        """An infer request for the model compiled with input batch ``batch`` (an int or an ``ov.Dimension``)."""
        model = self._ir.clone()
        shape = list(model.input(0).get_partial_shape().get_min_shape())
        model.reshape({model.input(0): [batch, *shape[1:]]})
        return self._core.compile_model(model, "CPU", self._config).create_infer_request()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import openvino as ov
        import torch

        n = x.shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} patches exceeds the compiled batch size {self.batch_size}")
        if n == self.batch_size:
            request = self._full
        else:
            if self._partial is None:
                self._partial = self._compile(ov.Dimension(1, self.batch_size))
            request = self._partial
        request.infer({0: x.contiguous().numpy()}, share_inputs=True, share_outputs=True)
        rts, pseudo = (request.get_output_tensor(i).data for i in range(len(OUTPUT_NAMES)))
        return torch.from_numpy(rts), torch.from_numpy(pseudo)


# ---------------------------------------------------------------- export and cache
def _cache_root(model_path: Path) -> Path:
    """``<model>.engines/`` beside the model file, or the user cache when that cannot be written."""
    beside = model_path.with_suffix(".engines")
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixeldino" / "engines"
    log.info("%s cannot be written; caching exported engines in %s", beside, user)
    user.mkdir(parents=True, exist_ok=True)
    return user


def cache_key(model_id: str, channels: int, patch: int) -> str:
    """File stem of a model's exports: the model id and the input shape (the batch size stays open)."""
    return f"{model_id}-{channels}x{patch}x{patch}"


def engine_cache_paths(model_path: str | os.PathLike[str], model_id: str, channels: int, patch: int) -> dict[str, Path]:
    """Where the ONNX file and the OpenVINO IR of a model and input shape are cached."""
    root = _cache_root(Path(model_path).with_suffix(".safetensors"))
    key = cache_key(model_id, channels, patch)
    return {"onnx": root / f"{key}.onnx", "openvino": root / f"{key}.openvino" / "model.xml"}


def _layer_norm_nchw(weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.nn.Module:
    import torch

    class ChannelLayerNormNCHW(torch.nn.Module):
        """Normalises over dim 1 instead of permute -> layer_norm -> permute: the same function, exported as
        reductions over the channel axis, which ONNX Runtime and OpenVINO run without two transposes per norm
        (about 1.5x faster on the CPU; the legacy exporter cannot export the permuted form at all)."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(weight.detach().clone().view(1, -1, 1, 1))
            self.bias = torch.nn.Parameter(bias.detach().clone().view(1, -1, 1, 1))
            self.eps = float(eps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centred = x - x.mean(dim=1, keepdim=True)
            var = (centred * centred).mean(dim=1, keepdim=True)
            return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias

    return ChannelLayerNormNCHW()


def exportable_model(model: UNet) -> torch.nn.Module:
    """A CPU float32 copy of ``model`` in eval mode, with per-pixel channel LayerNorms in their export form.

    Batch and group norms export as they are (batch norm folds into the convolutions in both engines).
    """
    from pixeldino import model as model_module

    layer_norm = getattr(model_module, "ChannelLayerNorm", None)
    graph = copy.deepcopy(model).cpu().float().eval()
    if layer_norm is None:
        return graph
    for parent in list(graph.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, layer_norm):
                setattr(parent, name, _layer_norm_nchw(child.weight, child.bias, child.eps))
    return graph


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx logs a warning per missing optional package (torchvision) and prints its progress."""
    import io
    import warnings
    from contextlib import redirect_stdout

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _publish_file(tmp: Path, final: Path) -> None:
    from pixeldino.io import follow_umask  # lazily, like torch: the CLI imports this module for BACKENDS

    follow_umask(tmp)  # the exporter's file mode is its own; a shared cache must be readable like any output
    os.replace(tmp, final)  # atomic; a concurrent job's identical export may be replaced, never torn


def _publish_dir(tmp: Path, final: Path) -> None:
    from pixeldino.io import follow_umask

    follow_umask(tmp)  # the converter may write private files: others could not use the cached engine
    try:
        os.rename(tmp, final)  # atomic for a directory; fails if another job published first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def export_onnx(model: UNet, path: Path, channels: int, patch: int) -> Path:
    """Export ``model`` to ONNX at ``path`` (input ``(batch, channels, patch, patch)``, batch dynamic), atomically."""
    import torch

    graph = exportable_model(model)
    example = torch.zeros(2, channels, patch, patch)  # batch 2: torch.export specialises a batch of 1
    from pixeldino.io import new_temporary

    tmp = new_temporary(path)  # named for the export, this host and process: a killed export's is removed later
    try:
        with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=ONNX_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            )
        _publish_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        for extra in tmp.parent.glob(tmp.name + "*"):  # an exporter's side files, if any
            extra.unlink(missing_ok=True)
    return path


def convert_openvino(onnx_path: Path, xml_path: Path) -> Path:
    """Convert an ONNX file to OpenVINO IR (``model.xml`` + ``model.bin`` in their own folder), atomically."""
    import openvino as ov

    folder = xml_path.parent
    from pixeldino.io import new_temporary

    tmp = new_temporary(folder, directory=True)
    try:
        ov.save_model(ov.convert_model(str(onnx_path)), str(tmp / xml_path.name), compress_to_fp16=False)
        _publish_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml_path


def load_engine(
    backend: str,
    model: UNet,
    device: torch.device,
    *,
    model_path: str | os.PathLike[str],
    model_id: str,
    patch: int,
    batch_size: int,
    num_threads: int | None = None,
    precision: str = "float32",
) -> Engine:
    """The engine ``backend`` (as resolved by :func:`resolve_engine`) for ``model``, exporting it on first use.

    Args:
        backend: ``torch``, ``onnxruntime`` or ``openvino``.
        model: the loaded model (exported only when no cached export exists).
        device: where the engine runs.
        model_path: the model file; exports are cached beside it.
        model_id: the model's id (hash of its weights), part of the cache key.
        patch: input height and width.
        batch_size: patches per call (OpenVINO compiles for it).
        num_threads: CPU threads of the engine; None: the engine's default.
        precision: ``float32`` or ``bfloat16`` (as resolved by :func:`resolve_precision`).
    """
    if backend == "torch":
        return TorchEngine(model, device, precision)
    channels = model.config.in_channels
    paths = engine_cache_paths(model_path, model_id, channels, patch)
    onnx_path = paths["onnx"]
    if backend == "openvino" and paths["openvino"].exists():
        return OpenVinoEngine(paths["openvino"], batch_size, num_threads, precision)
    if not onnx_path.exists():
        log.info("exporting model %s to ONNX (input %dx%dx%d): %s", model_id, channels, patch, patch, onnx_path)
        export_onnx(model, onnx_path, channels, patch)
    if backend == "onnxruntime":
        return OnnxRuntimeEngine(onnx_path, num_threads)
    if backend == "openvino":
        log.info("converting %s to OpenVINO IR: %s", onnx_path.name, paths["openvino"].parent)
        convert_openvino(onnx_path, paths["openvino"])
        return OpenVinoEngine(paths["openvino"], batch_size, num_threads, precision)
    raise ConfigError(f"predict backend {backend!r} is not one of {', '.join(BACKENDS[1:])}")
