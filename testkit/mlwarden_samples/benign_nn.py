"""Benign neural-network samples: PyTorch, TorchScript, Keras, ONNX, GGUF, safetensors, Hugging Face folders.

These are the files real users scan most, so each mirrors what a library really writes: state dicts of
several architectures, whole ``nn`` modules, training checkpoints full of innocuous extras (RNG states,
``argparse.Namespace``, ``pathlib`` paths), legacy and zip serialisation. Frameworks are imported inside
the builders only.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from mlwarden_samples import BuildContext, Made, register

#: A realistic chat template (ChatML with tools and a role check), as found in tokenizer_config.json.
CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- 'You may call functions. Signatures:\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}"
    "{{- tool | tojson }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{- raise_exception('Conversation roles must be system, user, assistant or tool') }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def torch_models() -> dict[str, Any]:
    """Small deterministic models of several architectures, built only from ``torch.nn``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return {
        "mlp": nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4)),
        "cnn": nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 8 * 8, 10),
        ),
        "lstm": nn.LSTM(input_size=12, hidden_size=16, num_layers=2, batch_first=True),
        "gru": nn.GRU(input_size=12, hidden_size=16, bidirectional=True),
        "transformer_encoder": nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True),
            num_layers=2,
            enable_nested_tensor=False,
        ),
        "embedding": nn.Sequential(nn.Embedding(100, 16), nn.LayerNorm(16)),
    }


@register("benign", "torch-state-dict", requires=("torch",))
def _state_dicts(ctx: BuildContext, folder: Path) -> list[Made]:
    import torch

    out = []
    for name, model in torch_models().items():
        path = folder / f"{name}.pt"
        torch.save(model.state_dict(), path)
        out.append(Made(path, f"torch.save zip state_dict of a {name} model"))
    return out


@register("benign", "torch-state-dict-legacy", requires=("torch",))
def _legacy_state_dicts(ctx: BuildContext, folder: Path) -> list[Made]:
    import torch

    out = []
    for name, model in torch_models().items():
        path = folder / f"{name}.bin"
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
        out.append(Made(path, f"legacy (non-zip) torch.save state_dict of a {name} model"))
    return out


@register("benign", "torch-full-module", requires=("torch",))
def _full_modules(ctx: BuildContext, folder: Path) -> list[Made]:
    import torch
    from torch import nn

    models = torch_models()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested-tensor performance hint
        transformer = nn.Transformer(
            d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32
        )
    whole = {"sequential_mlp": models["mlp"], "sequential_cnn": models["cnn"], "transformer": transformer}
    out = []
    for name, model in whole.items():
        path = folder / f"{name}.pt"
        torch.save(model, path)
        out.append(Made(path, f"torch.save of a whole {type(model).__name__} made only of torch.nn classes"))
    return out


@register("benign", "torch-checkpoint", requires=("torch", "numpy"))
def _checkpoints(ctx: BuildContext, folder: Path) -> list[Made]:
    import argparse
    import pathlib
    import random

    import numpy as np
    import torch

    model = torch_models()["mlp"]
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    out = []
    for opt_name in ("adam", "sgd"):
        if opt_name == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for _ in range(2):  # real optimizer state (exp_avg, momentum_buffer) needs real steps
            opt.zero_grad()
            nn_loss = torch.nn.functional.cross_entropy(model(x), y)
            nn_loss.backward()
            opt.step()
            sched.step()
        random.seed(0)
        np.random.seed(0)
        checkpoint = {
            "epoch": 2,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "scheduler_state_dict": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "args": argparse.Namespace(lr=1e-3, batch_size=8, optimizer=opt_name, layers=[32, 4]),
            "metrics": {"loss": float(nn_loss.item()), "accuracy": 0.5, "history": [1.4, 1.2]},
            "paths": {"output_dir": pathlib.Path("runs/exp1"), "data": pathlib.PurePosixPath("data/train.csv")},
        }
        for legacy in (False, True):
            path = folder / f"checkpoint_{opt_name}{'_legacy' if legacy else ''}.pt"
            torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
            out.append(
                Made(
                    path,
                    f"training checkpoint ({opt_name}, scheduler, RNG states, Namespace, paths)"
                    f"{' in legacy format' if legacy else ''}",
                )
            )
    return out


@register("benign", "torchscript", requires=("torch",))
def _torchscript(ctx: BuildContext, folder: Path) -> list[Made]:
    import torch

    models = torch_models()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated, but its archives are still everywhere
        scripted = torch.jit.script(models["mlp"].eval())
        traced = torch.jit.trace(models["cnn"].eval(), torch.zeros(1, 3, 16, 16))
        for name, module in (("scripted_mlp", scripted), ("traced_cnn", traced)):
            path = folder / f"{name}.pt"
            torch.jit.save(module, str(path))
            out.append(Made(path, f"TorchScript archive ({name.split('_')[0]})"))
    return out


@register("benign", "keras", requires=("keras",))
def _keras(ctx: BuildContext, folder: Path) -> list[Made]:
    absl = logging.getLogger("absl")  # keras logs its ".h5 is legacy" advice through absl
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # keras' own numpy-2 deprecation noise
            return _keras_models(folder)
    finally:
        absl.setLevel(level)


def _keras_models(folder: Path) -> list[Made]:
    import keras

    keras.utils.set_random_seed(0)
    seq = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    inputs = keras.Input((10,), name="features")
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Concatenate()([hidden, inputs]))
    functional = keras.Model(inputs, outputs, name="functional_model")
    functional.compile(optimizer="adam", loss="binary_crossentropy")
    out = []
    for name, model in (("sequential", seq), ("functional", functional)):
        for ext in ("keras", "h5"):
            path = folder / f"{name}.{ext}"
            model.save(path)
            out.append(Made(path, f"Keras 3 {name} model saved as .{ext}"))
    return out


def onnx_mlp() -> Any:
    """An ONNX MLP built with ``onnx.helper``: MatMul, Add, Relu, Softmax with float initialisers."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("W1", (4, 8)), ("B1", (8,)), ("W2", (8, 3)), ("B2", (3,)))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "B2"], ["h4"]),
        helper.make_node("Softmax", ["h4"], ["y"], axis=-1),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph(nodes, "mlp", [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mlwarden")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@register("benign", "onnx", requires=("onnx", "numpy"))
def _onnx(ctx: BuildContext, folder: Path) -> list[Made]:
    path = folder / "mlp.onnx"
    path.write_bytes(onnx_mlp().SerializeToString())
    return [Made(path, "ONNX MLP built with onnx.helper")]


@register("benign", "onnx-torch-export", requires=("torch", "onnx"))
def _onnx_export(ctx: BuildContext, folder: Path) -> list[Made]:
    import torch

    path = folder / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript-based exporter works offline; skip quietly where it is gone
            torch.onnx.export(torch_models()["cnn"].eval(), (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False)
        except Exception:  # noqa: BLE001
            return []
    return [Made(path, "ONNX exported by torch.onnx.export (TorchScript exporter)")]


@register("benign", "gguf", requires=("gguf", "numpy"))
def _gguf(ctx: BuildContext, folder: Path) -> list[Made]:
    import gguf
    import numpy as np

    path = folder / "tiny-llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(16)
    writer.add_block_count(1)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "hello", "world"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((7, 16)).astype(np.float32))
    writer.add_tensor("blk.0.attn_q.weight", rng.standard_normal((16, 16)).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [Made(path, "GGUF llama-style model with a realistic ChatML chat template")]


@register("benign", "safetensors", requires=("safetensors", "numpy"))
def _safetensors(ctx: BuildContext, folder: Path) -> list[Made]:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    path = folder / "numpy.safetensors"
    save_file(
        {
            "dense.weight": rng.standard_normal((8, 4)).astype(np.float32),
            "dense.bias": np.zeros(8, dtype=np.float32),
            "steps": np.arange(5, dtype=np.int64),
        },
        str(path),
        metadata={"framework": "numpy"},
    )
    out = [Made(path, "safetensors written from numpy arrays")]
    try:
        from safetensors.torch import save_file as save_torch
    except ImportError:  # no torch: the numpy file alone
        return out
    tpath = folder / "torch.safetensors"
    save_torch(
        {k: v.contiguous() for k, v in torch_models()["mlp"].state_dict().items()},
        str(tpath),
        metadata={"format": "pt"},
    )
    return [*out, Made(tpath, "safetensors written from a torch state_dict")]


def write_hf_folder(
    folder: Path, *, config: dict[str, Any], tokenizer_config: dict[str, Any], extra_files: dict[str, str] | None = None
) -> None:
    """Write a small Hugging-Face-style model folder (config, tokenizer config, safetensors weights)."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 64}, indent=2), encoding="utf-8"
    )
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    rng = np.random.default_rng(0)
    save_file(
        {
            "model.embed_tokens.weight": rng.standard_normal((32, 16)).astype(np.float32),
            "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((16, 16)).astype(np.float32),
            "model.norm.weight": np.ones(16, dtype=np.float32),
        },
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )


HF_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "num_key_value_heads": 2,
    "vocab_size": 32,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "float32",
    "transformers_version": "4.44.0",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def hf_tokenizer_config(template: str) -> dict[str, Any]:
    """A tokenizer_config.json body carrying ``template`` as its chat template."""
    return {
        "tokenizer_class": "LlamaTokenizerFast",
        "model_max_length": 128,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "chat_template": template,
    }


@register("benign", "hf-folder", requires=("safetensors", "numpy"))
def _hf_folder(ctx: BuildContext, folder: Path) -> list[Made]:
    target = folder / "tiny-llama"
    write_hf_folder(target, config=HF_CONFIG, tokenizer_config=hf_tokenizer_config(CHAT_TEMPLATE))
    return [Made(target, "Hugging Face model folder: config without auto_map, ChatML template, safetensors")]
