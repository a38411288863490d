"""What rlft reads from a language-model folder, checked before transformers reads any of it.

:meth:`rlft.policies.llm.LLMPolicy.from_pretrained` hands transformers a local folder only after
these checks, so bad input ends with one named error instead of a traceback from inside a loader:

- A hub id resolves from the local Hugging Face cache; nothing is downloaded unless asked
  (``download=True``, ``model.download=true`` in a run). A missing id fails at once, offline,
  naming the id and the cache, instead of after a minute of retries.
- Weights are read from safetensors only. Unpickling a file can run any code it holds, and
  ``torch.load``'s ``weights_only`` guard has been bypassed before (CVE-2025-32434, torch < 2.6,
  which pyproject allows): a folder whose weights are only pickles is refused, and a pickle beside
  safetensors is never read.
- Every safetensors and GGUF file's header is checked against the file's size first: a truncated
  download or a corrupt header is named with its sizes, not met as a Rust or ``struct`` error.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # in the order transformers looks
SAFETENSORS_SUFFIXES = (".safetensors", ".safetensors.index.json")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # a PEFT adapter saved inside
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt", "pytorch_model.bin.index.json")
CONVERSION = ("convert them to safetensors in an environment you trust: "
              "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)")
SAFETENSORS_MAX_HEADER = 100_000_000  # bytes: safetensors' own MAX_HEADER_SIZE
# bits per element of every safetensors dtype (safetensors' Dtype::bitsize)
SAFETENSORS_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
                    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
                    "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
# GGUF metadata value types: the fixed-size ones as struct formats, then the two that are not
GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
GGUF_VERSIONS = (2, 3)  # v1 counted in 32 bits; transformers reads 2 and 3
GGUF_ALIGNMENT = 32  # llama.cpp's default where general.alignment is absent


class UnsafeModelFileError(ValueError):
    """A model file rlft will not read because reading it could run code: a pickle."""


class CorruptModelFileError(ValueError):
    """A model file whose bytes do not hold what its format promises: truncated, or a bad header."""


class ModelNotFoundError(FileNotFoundError):
    """A model id that is no local folder, not in the local Hugging Face cache, and was not downloaded."""


def resolve_model(path: str, gguf_file: str | None = None, download: bool = False) -> Path:
    """The local folder ``path`` names: the folder itself, or a hub id's snapshot in the Hugging Face
    cache. Only with ``download`` is the hub asked, and then never for a pickle (rlft refuses them,
    and ``pytorch_model.bin`` beside safetensors would double the download)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if path.startswith((".", "/", "~")) or local.exists():
        raise FileNotFoundError(f"no model folder at {path} (give a from_pretrained folder or a hub id)")
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    cache = constants.HF_HUB_CACHE  # read now, not at import, so HF_HUB_CACHE set by the caller counts
    wanted = {"allow_patterns": [gguf_file]} if gguf_file else {"ignore_patterns": list(PICKLE_PATTERNS)}
    try:
        return Path(huggingface_hub.snapshot_download(path, cache_dir=cache, local_files_only=not download, **wanted))
    except HFValidationError:
        raise FileNotFoundError(f"no model folder at {path}, and it is no hub id either (owner/name)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError) as error:
        how = (f"downloading it failed: {str(error).splitlines()[0]}" if download else
               f"rlft downloads nothing unless asked (model.download=true): get it with `hf download {path}`, "
               "or give a local folder")
        raise ModelNotFoundError(f"{path} is no local folder and not in the Hugging Face cache ({cache}); "
                                 f"{how}") from None


def check_model_folder(folder: Path, gguf_file: str | None) -> None:
    """Refuse a local folder rlft cannot or will not load, saying what is wrong: transformers' own
    error for an empty folder is a misleading hint to install sentencepiece, and for a pickle or a
    damaged file it unpickles or raises from deep inside its loader."""
    if gguf_file:
        if not (folder / gguf_file).is_file():
            raise FileNotFoundError(f"no GGUF file {gguf_file} in {folder}")
        check_gguf(folder / gguf_file)
        return  # the GGUF file holds the config and the tokenizer
    found = sorted(p.name for p in folder.iterdir())[:8]
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a from_pretrained model folder: it has no config.json "
                                f"(it holds {found or 'nothing'}); give a saved model folder, or model.gguf_file")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                                "tokenizer with the model (tokenizer.save_pretrained)")
    for file in weight_files(folder, _json_object(folder / "config.json")):
        check_safetensors(file)


def weight_files(folder: Path, config: Mapping[str, Any]) -> list[Path]:
    """The safetensors files transformers reads ``folder``'s weights from: the file config.json's
    ``transformers_weights`` names (which transformers prefers to anything else, pickles included),
    else ``model.safetensors`` or its index's shards; and a PEFT adapter's, which peft would read from
    ``adapter_model.bin`` where the safetensors file is missing. A folder without them is refused."""
    named = config.get("transformers_weights")
    if named and not str(named).endswith(SAFETENSORS_SUFFIXES):
        raise UnsafeModelFileError(f"{folder / 'config.json'} points transformers at {named} (transformers_weights), "
                                   "not at safetensors: rlft reads weights from safetensors only and never unpickles "
                                   f"model files; {CONVERSION}")
    groups = [[str(named)] if named else list(MODEL_WEIGHTS)]
    if (folder / ADAPTER_CONFIG).is_file():
        groups.append([ADAPTER_WEIGHTS])
    files: list[Path] = []
    for names in groups:
        present = [name for name in names if (folder / name).is_file()]
        if not present:
            _refuse_missing_weights(folder, names)
        files += _shards(folder / present[0]) if present[0].endswith(".json") else [folder / present[0]]
    return files


def _refuse_missing_weights(folder: Path, names: Sequence[str]) -> NoReturn:
    """Say why ``folder`` has none of the safetensors files ``names``: it holds pickles instead
    (refused, unread), or no weights at all."""
    pickles = sorted({p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if pickles:
        raise UnsafeModelFileError(f"no {' nor '.join(names)} in {folder}, only pickles ({', '.join(pickles)}): rlft "
                                   "never unpickles model files (a pickle can run any code when loaded); "
                                   f"{CONVERSION}")
    raise FileNotFoundError(f"{folder} has no weights: no {' nor '.join(names)}; save the model with "
                            "save_pretrained (safetensors)")


def _shards(index: Path) -> list[Path]:
    """The shard files a ``*.safetensors.index.json`` maps tensors to, each present."""
    weight_map = _json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise CorruptModelFileError(f"{index} has no weight_map of tensor names to shard files")
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise FileNotFoundError(f"{index} names shards that are missing: {', '.join(missing)}")
    return shards


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (a config, an index)."""
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError; nested too deep
        raise CorruptModelFileError(f"{path} is not valid JSON: {type(error).__name__}: {error}") from None
    if not isinstance(value, dict):
        raise CorruptModelFileError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header does not fit the file, by safetensors' own rules: an
    8-byte little-endian header length N, N bytes of a JSON object (at most 100 MB), then a data
    section the tensors' ``data_offsets`` tile exactly, each span ``dtype`` x ``shape`` bytes long."""
    size = path.stat().st_size
    if size < 8:
        raise CorruptModelFileError(f"{path} is {size} bytes, shorter than the 8-byte header length "
                                    "every safetensors file starts with: truncated")
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise CorruptModelFileError(f"{path} declares a {length}-byte header, but {size - 8} bytes follow the "
                                        f"header length and safetensors allows at most {SAFETENSORS_MAX_HEADER}: "
                                        "truncated, or not a safetensors file")
        text = file.read(length)
    try:
        header = json.loads(text) if text.startswith(b"{") else None
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError; nested too deep
        header = None
    if not isinstance(header, dict):
        raise CorruptModelFileError(f"{path}'s {length}-byte header is not a JSON object (it starts {text[:20]!r})")
    data = size - 8 - length
    spans = sorted((_tensor_span(path, name, info, data), name) for name, info in header.items()
                   if name != "__metadata__")
    covered = 0
    for (begin, end), name in spans:
        if begin != covered:
            raise CorruptModelFileError(f"{path}: tensor {name} starts at byte {begin} of the data section, not at "
                                        f"{covered} where the tensor before it ends (tensors overlap or leave a gap)")
        covered = end
    if covered != data:
        raise CorruptModelFileError(f"{path}: its tensors cover {covered} bytes of a {data}-byte data section")


def _tensor_span(path: Path, name: str, info: Any, data: int) -> tuple[int, int]:
    """``(begin, end)`` of one tensor in a ``data``-byte data section, refused where it lies outside
    the section or is not ``dtype`` x ``shape`` bytes long."""
    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    fields = info if isinstance(info, dict) else {}
    dtype, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
    if (dtype not in SAFETENSORS_BITS or not isinstance(shape, list) or not all(map(count, shape))
            or not isinstance(offsets, list) or len(offsets) != 2 or not all(map(count, offsets))):
        raise CorruptModelFileError(f"{path}: tensor {name} has no valid dtype, shape and data_offsets: {info!r:.200}")
    begin, end = offsets
    if not begin <= end <= data:
        raise CorruptModelFileError(f"{path}: tensor {name} lies at bytes {begin}..{end}, outside the "
                                    f"{data}-byte data section: truncated")
    bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
    if bits != 8 * (end - begin):
        raise CorruptModelFileError(f"{path}: tensor {name} spans {end - begin} bytes, but {dtype} x {shape} is "
                                    f"{bits / 8:g} bytes")
    return begin, end


class _GGUFHeader:
    """A cursor over a GGUF file's header that refuses every read past the file's end."""

    def __init__(self, path: Path, data: mmap.mmap):
        self.path, self.data, self.pos = path, data, 0

    def take(self, size: int) -> int:
        """Move past ``size`` bytes; returns where they start."""
        start, self.pos = self.pos, self.pos + size
        if self.pos > len(self.data):
            raise CorruptModelFileError(f"{self.path} is {len(self.data)} bytes, but its GGUF header reads on to byte "
                                        f"{self.pos}: truncated")
        return start

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack_from(fmt, self.data, self.take(struct.calcsize(fmt)))

    def string(self) -> bytes:
        (length,) = self.unpack("<Q")
        return self.data[self.take(length):self.pos]

    def value(self, kind: int) -> Any:
        """Read past one metadata value; returns it where it is a number (``None`` otherwise)."""
        if kind in GGUF_SCALARS:
            return self.unpack(GGUF_SCALARS[kind])[0]
        if kind == GGUF_STRING:
            self.take(self.unpack("<Q")[0])
        elif kind == GGUF_ARRAY:
            element, length = self.unpack("<IQ")
            if element in GGUF_SCALARS:
                self.take(length * struct.calcsize(GGUF_SCALARS[element]))
            else:
                for _ in range(length):
                    self.value(element)
        else:
            raise CorruptModelFileError(f"{self.path}: GGUF metadata value of unknown type {kind} before byte "
                                        f"{self.pos}: corrupt")
        return None


def check_gguf(path: Path) -> None:
    """Walk a GGUF file's header (metadata, then the tensor table) and refuse the file where it is no
    GGUF v2/v3, a read runs past its end, or a tensor's data does: transformers' reader raises a bare
    ``struct.error`` for the first and fails reshaping for the last. Reads the header only (tens of
    milliseconds for SmolLM2's 49k-token vocabulary), never the tensors."""
    from gguf.constants import GGML_QUANT_SIZES

    size = path.stat().st_size
    with path.open("rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":
        raise CorruptModelFileError(f"{path} is not a GGUF file: it starts with {magic!r}, not b'GGUF'")
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = _GGUFHeader(path, data)
        header.take(4)
        version, tensor_count, value_count = header.unpack("<IQQ")
        if version not in GGUF_VERSIONS:
            raise CorruptModelFileError(f"{path} is GGUF version {version}; rlft reads versions 2 and 3")
        alignment = GGUF_ALIGNMENT
        for _ in range(value_count):
            key = header.string()
            value = header.value(header.unpack("<I")[0])
            alignment = value if key == b"general.alignment" else alignment
        tensors = []
        for _ in range(tensor_count):
            name = header.string().decode(errors="replace")
            (dims,) = header.unpack("<I")
            elements = math.prod(header.unpack(f"<{dims}Q"))
            ggml_type, offset = header.unpack("<IQ")
            tensors.append((name, elements, ggml_type, offset))
        table_end = header.pos
    if not isinstance(alignment, int) or alignment <= 0:
        raise CorruptModelFileError(f"{path}: general.alignment is {alignment!r}, not a positive integer")
    start = -(-table_end // alignment) * alignment  # the data section begins at the next aligned byte
    for name, elements, ggml_type, offset in tensors:
        if ggml_type not in GGML_QUANT_SIZES:
            raise CorruptModelFileError(f"{path}: tensor {name} has unknown ggml type {ggml_type}")
        block, block_bytes = GGML_QUANT_SIZES[ggml_type]
        end = start + offset + elements // block * block_bytes
        if end > size:
            raise CorruptModelFileError(f"{path} is {size} bytes, but tensor {name} ends at byte {end}: truncated")
