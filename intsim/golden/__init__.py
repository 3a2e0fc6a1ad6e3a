"""Golden vectors: capture every op of a forward pass, write it, replay it, compare dumps.

The format (file names, the ``$readmemh`` hex contract, the manifest) is
docs/GOLDEN_FORMAT.md.  Three entry points, each an ``intsim`` subcommand:

* :func:`export_golden` (``intsim golden``): one prefill of a prompt through the
  op-by-op graph of ``intsim.llama.forward`` with a :class:`Recorder` as its tap.  The
  recorder only reads what ``forward`` hands it (the op function, its arguments and its
  result) and writes them; capturing never changes a result (tested against the fused
  path).  Optional *stages* recompute an op's internal steps with the same public
  functions (DI-MatMul's input codes and exact accumulator, DI-ClippedSoftmax's clip,
  requantization and DI-Exp) as extra records placed before the op.
* :func:`replay` (``intsim replay``): re-run ops from their dumped inputs and check the
  dumped outputs bit for bit.
* :func:`compare` (``intsim compare``): a device-under-test dump against the golden one:
  first divergent op and element, both values, LSB delta, mismatches per op, and
  whether the golden value sat on a rounding tie.  The DUT may be a bare folder of
  .hex / .npy files named after golden records, as a design writes them (``dut``);
  ``intsim dut-template`` lists the files a design writes (``dut_template``).

Integer only (the float scan applies); json and hashlib handle the manifest.

Modules: ``formats`` (hex / text / npy encodings, the manifest text), ``ops`` (the op
kinds a dump may name), ``values`` (values <-> stored components), ``stages`` (stage
records), ``record`` (the Recorder and export), ``dump`` (reading and checking a dump),
``replaying``, ``comparing`` (element diffs), ``dut`` and ``dut_template`` (bare DUT
dumps), ``ties`` (rounding-tie analysis, on
intsim.oracle) and ``cli`` (the subcommands).  The names below are this package's
public interface.
"""
from __future__ import annotations

from ..softmax import softmax_clip
from .cli import add_golden_parsers, cmd_compare, cmd_golden, cmd_replay
from .comparing import Diff, compare, diff_arrays
from .dump import load_manifest, read_component, read_value, tensor_components, verify_files
from .formats import (FORMAT, FORMAT_VERSION, FORMATS, GENERATOR, INDEX_DIGITS, MANIFEST, REGENERATE,
                      hex_buffer, hex_lines, manifest_text, pack32_lines, parse_hex, txt_lines,
                      word_bits)
from .ops import EXACT_KINDS, KINDS, OUT_NAMES, model_param, model_params, model_tensors_sha256
from .record import OpRecord, Recorder, export_golden, parse_layers
from .replaying import call_args, check_model, replay, select_ops
from .stages import STAGES
from .ties import tie_status
from .values import assemble, components, split_result

__all__ = [
    "FORMAT", "FORMAT_VERSION", "FORMATS", "GENERATOR", "INDEX_DIGITS", "MANIFEST", "REGENERATE",
    "EXACT_KINDS", "KINDS", "OUT_NAMES", "STAGES",
    "Diff", "OpRecord", "Recorder",
    "add_golden_parsers", "assemble", "call_args", "check_model", "cmd_compare", "cmd_golden", "cmd_replay",
    "compare", "components", "diff_arrays", "export_golden", "hex_buffer", "hex_lines",
    "load_manifest", "manifest_text", "model_param", "model_params", "model_tensors_sha256",
    "pack32_lines", "parse_hex", "parse_layers", "read_component", "read_value", "replay",
    "select_ops", "softmax_clip", "split_result", "tensor_components", "tie_status", "txt_lines",
    "verify_files", "word_bits",
]
