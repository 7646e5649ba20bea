"""Streamed growth of checkpoint directories (autogrow.widen_checkpoint / deepen_checkpoint,
``autogrow widen DIR``): Hugging Face directories saved in several shards are grown on disk;
the output loads with from_pretrained and holds exactly what in-memory widen/deepen with the
same seed gives; bad input and interrupted runs leave no output and the source untouched."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import autogrow
from autogrow.checkpoint.stream import writer as writer_module
from autogrow.cli import main
from autogrow.verify import relative_error

transformers = pytest.importorskip("transformers")  # in the dev extra: always present in CI

SHARD = "20KB"
INDEX = "model.safetensors.index.json"


def _llama(tied: bool = False, dtype: torch.dtype = torch.float32):
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


BUILDERS = {"llama": _llama, "gpt2": _gpt2}


def _save(model, path: Path) -> Path:
    model.save_pretrained(path, max_shard_size=SHARD)
    assert (path / INDEX).is_file()  # several shards
    return path


def _stored(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def _digest(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def _tokens() -> torch.Tensor:
    return torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(5))


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_widen_checkpoint_equals_in_memory_widen(kind, tmp_path):
    model = BUILDERS[kind]()
    src = _save(model, tmp_path / "src")
    before = _digest(src)
    result = autogrow.widen_checkpoint(src, 2.0, tmp_path / "out", max_shard_size=SHARD, seed=3)
    assert _digest(src) == before
    assert result.path == tmp_path / "out" and result.shards > 1 and result.seed == 3
    assert result.max_error is not None and result.max_error <= 1e-4
    loaded = type(model).from_pretrained(result.path).eval()
    _same_state(loaded, autogrow.widen(model, 2.0, seed=3))
    x = _tokens()
    assert relative_error(loaded(x).logits, model(x).logits) <= 1e-4
    # the config rebuilds the grown shapes, and the index lists every stored tensor
    rebuilt = type(model)(type(loaded.config).from_pretrained(result.path))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in loaded.state_dict().items()
    }
    index = json.loads((result.path / INDEX).read_text())["weight_map"]
    stored = _stored(result.path)
    assert set(index) == set(stored)
    assert sum(t.numel() for t in stored.values()) == result.parameters[1]
    assert not list(tmp_path.glob(".*partial*"))


def test_tied_embeddings_are_stored_once(tmp_path):
    model = _gpt2()
    src = _save(model, tmp_path / "src")
    out = autogrow.widen_checkpoint(src, 2.0, tmp_path / "out", max_shard_size=SHARD).path
    stored = _stored(out)
    assert "lm_head.weight" not in stored and "transformer.wte.weight" in stored
    loaded = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_tied_weights_stored_twice_are_read(tmp_path):
    from safetensors.torch import save_file

    model = _gpt2()
    src = tmp_path / "src"
    model.save_pretrained(src)  # one file; then store the tied head a second time
    state = _stored(src)
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = autogrow.widen_checkpoint(src, 2.0, tmp_path / "out", seed=2).path
    stored = _stored(out)
    assert torch.equal(stored["lm_head.weight"], stored["transformer.wte.weight"])
    _same_state(
        transformers.GPT2LMHeadModel.from_pretrained(out), autogrow.widen(model, 2.0, seed=2)
    )


def test_dtypes_are_kept(tmp_path):
    model = _llama(dtype=torch.bfloat16)
    src = _save(model, tmp_path / "src")
    result = autogrow.widen_checkpoint(src, 2.0, tmp_path / "out", max_shard_size=SHARD, seed=0)
    assert {t.dtype for t in _stored(result.path).values()} == {torch.bfloat16}
    loaded = transformers.LlamaForCausalLM.from_pretrained(result.path, dtype=torch.bfloat16)
    _same_state(loaded, autogrow.widen(model, 2.0, seed=0))


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_deepen_checkpoint_equals_in_memory_deepen(kind, tmp_path):
    model = BUILDERS[kind]()
    src = _save(model, tmp_path / "src")
    result = autogrow.deepen_checkpoint(src, tmp_path / "out", n=2, max_shard_size=SHARD)
    assert result.max_error == 0.0
    loaded = type(model).from_pretrained(result.path).eval()
    _same_state(loaded, autogrow.deepen(model, n=2))
    field = "n_layer" if kind == "gpt2" else "num_hidden_layers"
    assert result.changes == {field: 4}
    x = _tokens()
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_cli_widens_and_deepens_a_directory(tmp_path, capsys):
    model = _llama(tied=True)
    src = _save(model, tmp_path / "src")
    wide, deep = tmp_path / "wide", tmp_path / "deep"
    args = ["widen", str(src), "--factor", "2", "--seed", "1", "--out", str(wide)]
    assert main([*args, "--max-shard-size", "100KB"]) == 0
    out = capsys.readouterr().out
    assert "streamed from disk" in out and "hidden_size=64" in out
    assert main(["deepen", str(wide), "--out", str(deep), "--no-verify"]) == 0
    assert "not verified" in capsys.readouterr().out
    loaded = transformers.LlamaForCausalLM.from_pretrained(deep)
    _same_state(loaded, autogrow.deepen(autogrow.widen(model, 2.0, seed=1)))
    # an existing output is kept unless --overwrite
    assert main([*args]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_cli_directory_needs_out(tmp_path, capsys):
    src = _save(_llama(), tmp_path / "src")
    assert main(["widen", str(src), "--factor", "2"]) == 2
    assert "pass --out" in capsys.readouterr().err


def _expect_error(src: Path, out: Path, *words: str) -> None:
    with pytest.raises(autogrow.CheckpointError) as info:
        autogrow.widen_checkpoint(src, 2.0, out, max_shard_size=SHARD)
    for w in words:
        assert w in str(info.value)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def test_missing_shard(tmp_path):
    src = _save(_llama(), tmp_path / "src")
    shard = sorted(set(json.loads((src / INDEX).read_text())["weight_map"].values()))[1]
    (src / shard).unlink()
    _expect_error(src, tmp_path / "out", shard, "do not exist")


def test_index_disagreeing_with_the_shards(tmp_path):
    src = _save(_llama(), tmp_path / "src")
    data = json.loads((src / INDEX).read_text())
    files = sorted(set(data["weight_map"].values()))
    name = next(k for k, f in data["weight_map"].items() if f == files[0])
    data["weight_map"][name] = files[1]
    (src / INDEX).write_text(json.dumps(data))
    _expect_error(src, tmp_path / "out", "disagrees with", name)


def test_config_the_class_cannot_build(tmp_path):
    src = _save(_llama(), tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    _expect_error(src, tmp_path / "out", "config.json", "NoSuchModelForCausalLM")


def test_weights_that_do_not_fit_the_config(tmp_path):
    src = _save(_llama(), tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    config["intermediate_size"] = 48
    (src / "config.json").write_text(json.dumps(config))
    _expect_error(src, tmp_path / "out", "do not fit", "mlp")


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    src = _save(_llama(), tmp_path / "src")
    before = _digest(src)
    calls = []

    def full(path, tensors, metadata, pipeline):
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(b"part of a shard")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, tensors, metadata, pipeline)

    real = writer_module.stream_safetensors
    monkeypatch.setattr(writer_module, "stream_safetensors", full)
    _expect_error(src, tmp_path / "out", "disk is full", "model-00002-of-")
    assert _digest(src) == before


def test_a_write_failing_in_the_writer_thread_names_the_shard(tmp_path, monkeypatch):
    # the writes run in a thread of their own: a full disk there still stops the run, names
    # the shard being written, and leaves nothing (no thread left writing, no hang)
    src = _save(_llama(), tmp_path / "src")
    os, real, calls = writer_module.os, writer_module.os.pwritev, []

    def full(fd, buffers, offset):
        calls.append(offset)
        if len(calls) == 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", full)
    _expect_error(src, tmp_path / "out", "disk is full", "model-0000")
    assert len(calls) == 12


def test_a_failure_while_growing_stops_the_run(tmp_path, monkeypatch):
    from autogrow.checkpoint.stream import plan

    src = _save(_llama(), tmp_path / "src")
    real, grown = plan.grow_into, []

    def failing(t, axes, buffer):
        grown.append(t.shape)
        if len(grown) == 5:
            raise RuntimeError("out of memory")
        return real(t, axes, buffer)

    monkeypatch.setattr(plan, "grow_into", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        autogrow.widen_checkpoint(src, 2.0, tmp_path / "out", max_shard_size=SHARD)
    assert len(grown) < len(_stored(src))  # the run stopped when the failure was seen
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_an_interrupted_run_leaves_no_output_and_a_rerun_works(tmp_path, monkeypatch):
    model = _llama()
    src = _save(model, tmp_path / "src")
    out = tmp_path / "out"
    real = writer_module.stream_safetensors

    def interrupted(path, tensors, metadata, pipeline):
        real(path, tensors, metadata, pipeline)
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_module, "stream_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        autogrow.widen_checkpoint(src, 2.0, out, max_shard_size=SHARD)
    assert not out.exists()
    monkeypatch.setattr(writer_module, "stream_safetensors", real)
    # an interrupted run leaves its partial directory behind; another seed starts clean
    stale = tmp_path / ".out.partial"
    assert stale.is_dir()
    (stale / "model-00001-of-00009.safetensors").write_bytes(b"half")
    result = autogrow.widen_checkpoint(src, 2.0, out, max_shard_size=SHARD, seed=0)
    assert not stale.exists()
    _same_state(
        transformers.LlamaForCausalLM.from_pretrained(result.path),
        autogrow.widen(model, 2.0, seed=0),
    )


def test_a_rerun_resumes_an_interrupted_run(tmp_path, monkeypatch):
    model = _llama()
    src = _save(model, tmp_path / "src")
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    real = writer_module.stream_safetensors
    written: list[str] = []

    def interrupted(path, *args):  # stopped (Ctrl-C) as the third shard starts
        if len(written) == 2:
            raise KeyboardInterrupt
        real(path, *args)
        written.append(path.name)

    def recording(path, *args):
        written.append(path.name)
        real(path, *args)

    def interrupt(**kwargs):
        shutil.rmtree(out, ignore_errors=True)
        written.clear()
        monkeypatch.setattr(writer_module, "stream_safetensors", interrupted)
        with pytest.raises(KeyboardInterrupt):
            autogrow.widen_checkpoint(src, 2.0, out, max_shard_size=SHARD, **kwargs)
        assert not out.exists() and sorted(p.name for p in partial.glob("*.safetensors")) == written
        done = list(written)
        written.clear()
        monkeypatch.setattr(writer_module, "stream_safetensors", recording)
        return done

    done = interrupt(seed=0)
    result = autogrow.widen_checkpoint(src, 2.0, out, max_shard_size=SHARD, seed=0)
    assert result.resumed_shards == 2 and not set(done) & set(written)
    assert len(written) + 2 == result.shards and not partial.exists()
    _same_state(
        transformers.LlamaForCausalLM.from_pretrained(result.path),
        autogrow.widen(model, 2.0, seed=0),
    )
    first = _digest(result.path)
    again = dict(max_shard_size=SHARD, verify=False)
    # a shard changed since it was recorded is written again
    done = interrupt(seed=0)
    (partial / done[1]).write_bytes(b"damaged")
    resumed = autogrow.widen_checkpoint(src, 2.0, out, seed=0, **again)
    assert resumed.resumed_shards == 1 and done[1] in written and done[0] not in written
    assert _digest(resumed.path) == first
    # other arguments (another seed, another shard size) start clean
    interrupt(seed=0)
    other = autogrow.widen_checkpoint(src, 2.0, out, seed=1, **again)
    assert other.resumed_shards == 0 and len(written) == other.shards
    interrupt(seed=0)
    bigger = autogrow.widen_checkpoint(src, 2.0, out, seed=0, **{**again, "max_shard_size": "40KB"})
    assert bigger.resumed_shards == 0


def test_verification_failure_leaves_no_output(tmp_path, monkeypatch):
    from autogrow.checkpoint.stream import plan

    src = _save(_llama(), tmp_path / "src")
    real = plan.grow_into

    def wrong(t, axes, buffer):
        grown = real(t, axes, buffer)
        return plan.Grown(grown.value * 1.5, grown.rows)

    monkeypatch.setattr(plan, "grow_into", wrong)
    with pytest.raises(autogrow.VerificationError, match="nothing was written"):
        autogrow.widen_checkpoint(src, 2.0, tmp_path / "out", max_shard_size=SHARD)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    # without verification the (wrong) output is written: the check is what caught it
    result = autogrow.widen_checkpoint(
        src, 2.0, tmp_path / "out", max_shard_size=SHARD, verify=False
    )
    assert result.max_error is None and (result.path / INDEX).is_file()


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(autogrow.CheckpointError, match="not a checkpoint directory"):
        autogrow.widen_checkpoint(tmp_path, 2.0, tmp_path / "out")


def test_autogrow_checkpoint_directory(tmp_path):
    autogrow.register_factory("models:MLP")
    try:
        net = autogrow.seed_model("models:MLP", d_in=6).eval()
        wide = autogrow.widen(net, 1.5, seed=0)
        src = autogrow.save(wide, tmp_path / "src")
        result = autogrow.widen_checkpoint(src, 2.0, tmp_path / "out", seed=4)
        assert result.shards == 1 and sorted(p.name for p in result.path.iterdir()) == [
            "model.safetensors",
            "recipe.json",
        ]
        _same_state(autogrow.load(result.path), autogrow.widen(autogrow.load(src), 2.0, seed=4))
        assert [s.op for s in autogrow.load(result.path).autogrow_recipe.steps] == ["widen"] * 2
        # the CLI streams such a directory with --stream (without it, it loads it, as before)
        args = ["widen", str(src), "--factor", "2", "--seed", "4", "--out", str(tmp_path / "cli")]
        assert main([*args, "--stream"]) == 0
        assert _stored(tmp_path / "cli").keys() == _stored(result.path).keys()
        deep = autogrow.deepen_checkpoint(src, tmp_path / "deep", n=2)
        assert deep.max_error == 0.0
        _same_state(autogrow.load(deep.path), autogrow.deepen(autogrow.load(src), n=2))
        # a recipe with a deepen step cannot be replayed on the meta device
        with pytest.raises(autogrow.CheckpointError, match="step 2 is a deepen"):
            autogrow.widen_checkpoint(deep.path, 2.0, tmp_path / "again")
    finally:
        autogrow.unregister_factory("models:MLP")


def test_autogrow_checkpoint_factory_needs_trust(tmp_path):
    net = autogrow.seed_model("models:MLP", d_in=6)
    src = autogrow.save(net, tmp_path / "src")
    with pytest.raises(autogrow.CheckpointError, match="trust=True"):
        autogrow.widen_checkpoint(src, 2.0, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = autogrow.widen_checkpoint(src, 2.0, tmp_path / "out", trust=True, seed=0)
    _same_state(autogrow.load(result.path, trust=True), autogrow.widen(net.eval(), 2.0, seed=0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_streamed_grow_is_grow_tensor_bit_for_bit(dtype):
    from autogrow.checkpoint.stream.grow import grow
    from autogrow.transforms.axis_maps import AxisMap, grow_tensor
    from autogrow.transforms.mapping import sample_map

    gen = torch.Generator().manual_seed(0)
    t = (torch.randn(6, 5, 4, generator=gen) * 100).to(dtype)
    maps = [sample_map(n, 2 * n, uniform=False, symmetry="split", generator=gen) for n in (6, 5, 4)]
    axes = [AxisMap(0, maps[0], False), AxisMap(1, maps[1], True), AxisMap(2, maps[2], True)]
    expected = grow_tensor(t, axes)
    got = grow(t, axes)
    assert got.dtype == expected.dtype and torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16, torch.int64])
@pytest.mark.parametrize("dims", [(0,), (1,), (0, 1), (1, 0)])
def test_matrix_route_is_grow_tensor_bit_for_bit(dtype, dims):
    # columns gathered into a reused buffer and scaled there, rows left to the writer: the
    # same bytes as grow_tensor, whichever axes grow and in which order they are listed
    from autogrow.checkpoint.stream.grow import grow_into, scratch_bytes
    from autogrow.transforms.axis_maps import AxisMap, grow_tensor
    from autogrow.transforms.mapping import sample_map

    gen = torch.Generator().manual_seed(1)
    t = (torch.randn(6, 5, generator=gen) * 100).to(dtype)
    maps = {d: sample_map(n, 2 * n + 1, uniform=False, symmetry="split", generator=gen)
            for d, n in ((0, 6), (1, 5))}  # fmt: skip
    axes = [AxisMap(d, maps[d], reduce=d == 1) for d in dims]
    before = t.clone()
    buffer = torch.full((scratch_bytes(t.shape, dtype, axes) + 3,), 7, dtype=torch.uint8)
    grown = grow_into(t, axes, buffer)
    expected = grow_tensor(t, axes)
    assert grown.shape == tuple(expected.shape)
    assert torch.equal(grown.materialize(), expected) and torch.equal(t, before)
    assert (grown.rows is None) == (0 not in dims)
    if 1 in dims:  # the columns live in the buffer the writer reuses
        assert grown.value.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


def test_short_writes_are_resumed(tmp_path, monkeypatch):
    # pwritev may write less than asked (a signal, a pipe): the rest follows, in order
    from autogrow.checkpoint.stream.writer import _pwrite_all

    os = writer_module.os

    def short(fd, buffers, offset):  # at most 3 bytes of the first buffer
        return os.pwrite(fd, bytes(buffers[0])[:3], offset)

    monkeypatch.setattr(os, "pwritev", short)
    parts = [memoryview(bytes(range(i, i + 7))) for i in range(0, 70, 7)]
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        _pwrite_all(fd, parts, 0)
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(range(70))


def test_paired_symmetry_is_refused(tmp_path):
    src = _save(_llama(), tmp_path / "src")
    with pytest.raises(autogrow.InvalidArgumentError, match="paired"):
        autogrow.widen_checkpoint(src, 2.0, tmp_path / "out", symmetry="paired")
    assert not (tmp_path / "out").exists()


def test_multi_head_llama_streamed_by_one_and_a_half_equals_in_memory(tmp_path):
    # x1.5 grows Llama's hidden size by zero-filled units (RMSNorm), the heads with it (head
    # size kept), and rescales rms_norm_eps: the streamed directory must hold the same.
    model = _llama()
    src = _save(model, tmp_path / "src")
    result = autogrow.widen_checkpoint(src, 1.5, tmp_path / "out", max_shard_size=SHARD, seed=3)
    assert result.max_error is not None and result.max_error <= 1e-4
    loaded = type(model).from_pretrained(result.path).eval()
    in_memory = autogrow.widen(model, 1.5, seed=3)
    _same_state(loaded, in_memory)
    old, new = model.config, loaded.config
    assert new.hidden_size == old.hidden_size * 3 // 2
    assert new.num_attention_heads == old.num_attention_heads * 3 // 2
    assert new.head_dim == old.head_dim
    assert new.rms_norm_eps == in_memory.config.rms_norm_eps != old.rms_norm_eps
    x = _tokens()
    assert relative_error(loaded(x).logits, model(x).logits) <= 1e-4


def test_cli_says_when_it_resumes(tmp_path, monkeypatch, capsys):
    src = _save(_llama(), tmp_path / "src")
    out = tmp_path / "out"
    real = writer_module.stream_safetensors
    written: list[str] = []

    def interrupted(path, *args):  # stopped (Ctrl-C) as the second shard starts
        if written:
            raise KeyboardInterrupt
        real(path, *args)
        written.append(path.name)

    args = ["widen", str(src), "--factor", "2", "--out", str(out), "--seed", "0", "--no-verify"]
    args += ["--max-shard-size", "100KB"]
    monkeypatch.setattr(writer_module, "stream_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(writer_module, "stream_safetensors", real)
    capsys.readouterr()
    assert main(args) == 0
    assert "resumed: 1 weight file(s) kept" in capsys.readouterr().out
