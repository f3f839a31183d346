"""``embedkit export``: a sentence-transformers model as an ONNX or OpenVINO serving folder, optionally int8.

    embedkit export MODEL --format onnx|openvino [--quantize int8] -o OUT [--overwrite]

OUT is a sentence-transformers folder (modules.json, tokenizer, config, pooling, ...) whose transformer weights
are in the backend's file, in the layout sentence-transformers' own backend export writes: ``onnx/model.onnx``,
``onnx/model_qint8_<cpu>.onnx`` or ``openvino/openvino_model.xml`` (+ ``.bin``), plus ``export.json`` saying which
file to load. ``embedkit eval`` / ``encode`` (and :func:`load_model`) load it on that backend.

Why embedkit writes the files itself instead of calling ``sentence_transformers.backend``'s export functions:
those run on ``optimum`` (``optimum-onnx`` / ``optimum-intel``), and no release of either on the package index
works with transformers 5 (optimum-onnx 0.1.0 needs transformers < 4.58, optimum-intel 2.2.0 < 5.6; both fail at
import under sentence-transformers 6, which needs transformers >= 5). The parts they wrap do work: the
transformer is exported with ``torch.onnx.export`` (inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
where the model takes them; output ``last_hidden_state``; batch and sequence axes dynamic: optimum's
feature-extraction contract), quantized with onnxruntime's ``quantize_dynamic`` and converted with OpenVINO's
``convert_model``. Loading (embedkit/backends.py) runs onnxruntime / OpenVINO through sentence-transformers' own
backend hook, so the rest of the pipeline (tokenizer, pooling, normalisation, prompts) is sentence-transformers'.

int8 (``--quantize int8``) is dynamic quantization, onnxruntime's: weights int8 (per output channel), activations
quantized at run time (uint8), no calibration set. As optimum's ``AutoQuantizationConfig`` presets, the file is
named after the CPU it targets, picked from the CPU's flags: ``avx512_vnni``, ``avx512``, ``avx2`` or ``arm64``;
the settings are optimum's presets (weights int8 symmetric per channel, activations uint8 asymmetric, every
operator onnxruntime quantizes dynamically) except that ``avx2`` and ``avx512`` (x86 without VNNI) use the 7-bit
weight range (``reduce_range``), which onnxruntime recommends there against the saturation of its u8s8 int16
accumulation; optimum leaves that to the user.
OpenVINO int8 needs static quantization with a calibration set (nncf); it is refused: use ``--format onnx
--quantize int8``.

This module imports no torch at import time (the parser is built without it).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedkit.backends import FORMATS, MARKER, TORCH_WEIGHTS, backend_of, read_marker, require_backend
from embedkit.errors import EmbedkitError
from embedkit.model_ref import check_model, load_model
from embedkit.outputs import OutputFolder, open_folder, require_space, tensor_bytes, writing
from embedkit.version import __version__

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

QUANTIZE = ("int8",)
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


# ---------------------------------------------------------------------------------------------------------
# Checks (no heavy imports)


def check_options(fmt: str, quantize: str | None) -> None:
    """Refuse an unknown format, a quantization the format cannot take, or a backend that is not installed."""
    if fmt not in FORMATS:
        raise EmbedkitError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise EmbedkitError(f"--quantize {quantize!r}: expected {' or '.join(QUANTIZE)}")
    if fmt == "openvino" and quantize:
        raise EmbedkitError("--format openvino --quantize int8: OpenVINO int8 is static quantization, which needs a "
                            "calibration set (nncf); embedkit does not offer it. Use --format onnx --quantize int8 "
                            "(dynamic, no calibration), or --format openvino for fp32")
    require_backend(fmt, f"--format {fmt}")


def cpu_target(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The int8 preset for this CPU (or the given ``flags`` / ``machine``): arm64, avx512_vnni, avx512 or avx2."""
    if (machine or platform.machine()).lower() in ("arm64", "aarch64"):
        return "arm64"
    if flags is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                flags = set(next((line for line in fh if line.startswith("flags")), "").split())
        except OSError:
            flags = set()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def check_output_folder(output: str | os.PathLike, overwrite: bool, model: Any = None) -> OutputFolder:
    """The ``-o`` folder, checked as every command's output (:mod:`embedkit.outputs`): never the model, inside or
    around it, a training run's folder, or a folder holding files ``export`` did not write; an existing one only
    with ``overwrite``. Nothing is written here."""
    inputs = [("model", model)] if isinstance(model, (str, os.PathLike)) else []
    return open_folder(output, command="export", flag="-o", overwrite=overwrite, swap=True, inputs=inputs)


# ---------------------------------------------------------------------------------------------------------
# Export


def export(model: Any, output: str | os.PathLike, fmt: str = "onnx", quantize: str | None = None,
           overwrite: bool = False) -> Path:
    """Write ``model`` (a SentenceTransformer, folder, packaged model or Hub id) to ``output`` as a serving folder
    for ``fmt`` (``onnx`` | ``openvino``), int8 with ``quantize="int8"`` (onnx only). Returns the folder.

    The folder is built beside ``output`` and renamed into place only when complete; an existing ``output`` is
    replaced only with ``overwrite`` (and never when it is the model being exported)."""
    check_options(fmt, quantize)
    target = check_output_folder(output, overwrite, model)
    if isinstance(model, (str, os.PathLike)):
        check_model(str(model), what="model", trust_flag=None)
    st_model, spec = load_model(model, device="cpu")
    if backend_of(st_model) is not None:
        raise EmbedkitError(f"model {spec}: is already an exported ({backend_of(st_model)}) folder; export the "
                            "torch model it came from")
    from sentence_transformers.models import Transformer

    routes = getattr(st_model[0], "sub_modules", None) if len(st_model) else None
    if routes is not None:  # a model with experts (docs/experts.md): N encoders behind a Router
        raise EmbedkitError(f"model {spec or '<instance>'}: a Router with one encoder per route "
                            f"({', '.join(routes)}); export takes one transformer encoder, so a model with experts "
                            "is not exported")
    if not len(st_model) or not isinstance(st_model[0], Transformer):
        raise EmbedkitError(f"model {spec or '<instance>'}: its first module is "
                            f"{type(st_model[0]).__name__ if len(st_model) else 'missing'}, not a transformer; only "
                            "a transformer encoder can be exported")
    subject = f"-o {output}"
    with target:
        tmp = target.work
        # fp32 ONNX file, plus the int8 or OpenVINO copy made from it: twice the weights at least
        require_space(tmp, 2 * tensor_bytes(st_model.state_dict()), f"{subject}: the exported model")
        with writing(tmp, "writing the exported model", subject):
            st_model.save(str(tmp))
            for name in TORCH_WEIGHTS:  # the backend file holds the weights; a serving folder has no torch copy
                (tmp / name).unlink(missing_ok=True)
            onnx_fp32 = tmp / "onnx" / "model.onnx"
            inputs = _export_onnx(st_model, onnx_fp32)
            if fmt == "onnx" and quantize == "int8":
                cpu = cpu_target()
                file = tmp / "onnx" / f"model_qint8_{cpu}.onnx"
                _quantize_dynamic(onnx_fp32, file, cpu)
                onnx_fp32.unlink()  # one model file per folder: no question which one loads
                details: dict[str, Any] = {"quantization": "dynamic int8 (onnxruntime quantize_dynamic): weights "
                                           "int8 per channel, activations uint8 at run time", "cpu_target": cpu,
                                           "reduce_range": cpu in ("avx2", "avx512")}
            elif fmt == "openvino":
                file = tmp / "openvino" / "openvino_model.xml"
                _convert_openvino(onnx_fp32, file)
                shutil.rmtree(tmp / "onnx")
                details = {"precision": "fp32 (weights stored fp32; inference precision pinned to f32 when loaded)"}
            else:
                file = onnx_fp32
                details = {"precision": "fp32"}
            marker = {"format": fmt, "file": file.relative_to(tmp).as_posix(), "quantize": quantize,
                      "inputs": inputs, "opset": OPSET, "source": spec, **details}
            marker["embedkit_version"] = __version__
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        return target.commit()


def _onnx_inputs(st_model: SentenceTransformer) -> tuple[list[str], dict[str, Any]]:
    """The transformer's input names (those of ONNX_INPUTS the tokenizer gives and forward takes) and an
    example batch (two sentences of different lengths, so nothing is traced as a constant)."""
    hf = st_model[0].auto_model
    params = set(inspect.signature(hf.forward).parameters)
    fn = getattr(st_model, "preprocess", None) or st_model.tokenize
    features = fn(["An example sentence to trace the exported graph with.", "Short one."])
    names = [n for n in ONNX_INPUTS if n in features and n in params]
    return names, {n: features[n] for n in names}


def _export_onnx(st_model: SentenceTransformer, path: Path) -> list[str]:
    """The transformer (token ids -> last_hidden_state) as ONNX at ``path``; returns its input names."""
    import torch

    hf = st_model[0].auto_model.eval()
    names, example = _onnx_inputs(st_model)

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, args)), return_dict=True).last_hidden_state

    dynamic = {n: {0: "batch_size", 1: "sequence_length"} for n in [*names, "last_hidden_state"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on transformers' mask code: those branches are constant for an encoder (the key
        # length is the mask's length; a mask is always given), as the equality tests check.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        # The TorchScript exporter: the graph optimum writes (dynamic batch and length axes, no onnxscript needed).
        torch.onnx.export(LastHiddenState().eval(), tuple(example[n] for n in names), str(path), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=dynamic, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    return names


def _quantize_dynamic(src: Path, dst: Path, target: str) -> None:
    """onnxruntime dynamic int8 quantization of ``src`` into ``dst`` (see the module docstring)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class _NoPreprocessAdvice(logging.Filter):  # onnxruntime's root-logger advice, aimed at static image models
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing before quantization" not in record.getMessage()

    quiet = _NoPreprocessAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(src), str(dst), per_channel=True, reduce_range=target in ("avx2", "avx512"),
                         weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().removeFilter(quiet)


def _convert_openvino(src: Path, dst: Path) -> None:
    """OpenVINO IR (``.xml`` + ``.bin``) of the ONNX file ``src``, weights kept fp32 (no fp16 compression)."""
    import openvino as ov

    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(src)), str(dst), compress_to_fp16=False)


# ---------------------------------------------------------------------------------------------------------
# Command line


def _run(args: argparse.Namespace) -> int:
    out = export(  # export() checks the options and the output folder before the model loads
        args.model, args.output, args.format, args.quantize, overwrite=args.overwrite)
    marker = read_marker(out)
    assert marker is not None
    print(f"{out}: {args.format}{' int8' if args.quantize else ' fp32'} ({marker['file']}); load with "
          f"embedkit eval/encode {out}", file=sys.stdout)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``embedkit export MODEL --format onnx|openvino [--quantize int8] -o OUT [--overwrite]``."""
    p = subparsers.add_parser("export", help="export a model for serving (ONNX or OpenVINO, optionally int8)")
    p.add_argument("model", help="model folder, packaged model or Hub id")
    p.add_argument("--format", required=True, help="onnx | openvino")
    p.add_argument("--quantize", help="int8 (onnx only: dynamic quantization for this CPU)")
    p.add_argument("-o", "--output", required=True, help="the folder to write (a sentence-transformers folder)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")
    p.set_defaults(func=_run)
