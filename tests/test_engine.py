"""Engine and KV cache on CPU with a tiny random model: cache == full forward, fused == unfused,
determinism, batching, rollover with bounded memory, input checks."""

import dataclasses

import pytest
import torch

from kernels.schedule_update import noise_update_torch
from worldsim.engine import Engine, EngineConfig
from worldsim.engine.kv_cache import KVCache
from worldsim.engine.schedule import student_sigmas
from worldsim.model import ModelConfig, WorldDiT, anchor_frames
from worldsim.model.rope import apply_rope


# plain, an anchored student, two anchor frames (anchor_history=2), and those with a pixel refiner
ANCHORS = [False, "input", "input2", "refined"]
ANCHOR_IDS = ["plain", "anchor-input", "anchor-input-2", "anchor-input-2-refined"]


def tiny_model(chunk=1, temporal_every=1, seed=0, anchor=False):
    torch.manual_seed(seed)
    m = WorldDiT(ModelConfig(resolution=16, patch=4, dim=32, depth=2, heads=2, kv_heads=1, num_actions=5,
                             chunk=chunk, temporal_every=temporal_every, anchor=bool(anchor),
                             anchor_history=2 if anchor in ("input2", "refined") else 1,
                             refine=6 if anchor == "refined" else 0)).eval()
    with torch.no_grad():  # zero-init output layers would make every test trivially pass
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def frames(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 3, 16, 16, generator=g) * 2 - 1


@pytest.mark.parametrize("anchor", ANCHORS, ids=ANCHOR_IDS)
@pytest.mark.parametrize("chunk", [1, 3], ids=lambda c: f"C={c}")
@pytest.mark.parametrize("temporal_every", [1, 2], ids=lambda t: f"temporal_every={t}")
def test_cached_forward_equals_full_forward(chunk, temporal_every, anchor):
    m = tiny_model(chunk, temporal_every, anchor=anchor)
    T = 7  # not a multiple of the chunk: the last chunk is partial
    x, a = frames(2, T), torch.randint(0, 5, (2, T))
    sig = torch.rand(2, T)
    anc = anchor_frames(frames(2, T, seed=1), chunk, history=m.cfg.anchor_history)
    with torch.no_grad():
        full = m(x, sig, a, anchor=anc)
        eng = Engine(m, EngineConfig(chunk=chunk, window=12, sink=2))
        eng.reset(2)
        outs = []
        for s in range(0, T, chunk):
            e = min(s + chunk, T)
            outs.append(m(x[:, s:e], sig[:, s:e], a[:, s:e], frame_pos=eng.cache.next_positions(e - s),
                          chunk=chunk, cache=eng.cache, anchor=anc[:, s:e]))
            eng.cache.commit(e - s)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def reference_generate(m, cfg, ctx, prev_actions, actions, seed):
    """Generation without any cache: every forward sees the whole sequence, block-causal mask.

    Replays the engine's random draws (initial noise, then one seed per re-noise) from the same generator.
    """
    g = torch.Generator().manual_seed(seed)
    seq, acts = ctx.clone(), prev_actions.clone()
    B, C = ctx.shape[0], cfg.chunk
    sigmas = cfg.sigmas()
    out = []
    for a in actions.split(C, dim=1):
        x = torch.randn((B, C) + ctx.shape[2:], generator=g)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            K = seq.shape[1]
            sig = torch.cat([torch.full((B, K), cfg.context_sigma), torch.full((B, C), s)], 1)
            full = torch.cat([seq, x], 1)
            with torch.no_grad():  # anchors: the clean frame before each chunk (x's own are never used)
                x0 = m(full, sig, torch.cat([acts, a], 1), chunk=C,
                       anchor=anchor_frames(full, C, history=m.cfg.anchor_history))[:, K:]
            if s_next == 0.0:
                x = x0
                break
            step_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            x = noise_update_torch(x.flatten(0, 1), x0.flatten(0, 1), s, s_next, "renoise", seed=step_seed).view(x.shape)
        x = x.clamp(-1, 1)
        out.append(x)
        seq, acts = torch.cat([seq, x], 1), torch.cat([acts, a], 1)
    return torch.cat(out, 1)


@pytest.mark.parametrize("chunk,steps", [(1, 1), (1, 2), (1, 4), (3, 2)], ids=lambda v: str(v))
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("anchor", ANCHORS, ids=ANCHOR_IDS)
def test_engine_generation_equals_full_sequence_reference(chunk, steps, fuse, anchor):
    m = tiny_model(chunk, anchor=anchor)
    cfg = EngineConfig(chunk=chunk, steps=steps, shift=2.0, window=16, sink=2, fuse_cache_write=fuse)
    ctx, prev = frames(2, 3), torch.tensor([[5, 1, 2], [5, 3, 4]])  # 5 = no action
    actions = torch.randint(0, 5, (2, 2 * chunk * 2))
    eng = Engine(m, cfg)
    eng.reset(2, seed=7)
    eng.prefill(ctx, prev)
    got = torch.cat([eng.step(a) for a in actions.split(chunk, dim=1)], 1)
    want = reference_generate(m, cfg, ctx, prev, actions, seed=7)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_deterministic_under_seed_and_seeds_differ():
    m = tiny_model()
    def run(seed):
        eng = Engine(m, EngineConfig(steps=2))
        eng.reset(1, seed=seed)
        eng.prefill(frames(1, 2))
        return torch.cat([eng.step(i % 5) for i in range(5)], 1)
    torch.testing.assert_close(run(3), run(3), atol=0, rtol=0)
    assert (run(3) - run(4)).abs().max() > 1e-3


def test_batch_rows_are_independent_sessions():
    m = tiny_model()
    eng = Engine(m, EngineConfig(steps=1))
    eng.reset(3, seed=0)
    ctx = frames(1, 2).expand(3, -1, -1, -1, -1)
    eng.prefill(ctx)
    out = eng.step(torch.tensor([0, 1, 2]))
    assert out.shape == (3, 1, 3, 16, 16) and torch.isfinite(out).all()
    # Different actions from the same context and a 1-step sampler give different frames per row.
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_rolling_cache_bounded_and_sinks_rerotated():
    m = tiny_model()
    cfg = EngineConfig(steps=1, window=4, sink=2)
    eng = Engine(m, cfg)
    eng.reset(1)
    eng.prefill(frames(1, 3))
    nbytes = eng.cache.nbytes()
    for i in range(40):
        out = eng.step(i % 5)
        assert torch.isfinite(out).all()
    c = eng.cache
    assert c.nbytes() == nbytes and c.full and c.valid == cfg.sink + cfg.window
    assert c.frames == 3 + 40 - 1  # the last frame is pending (fused cache write)
    window_pos = sorted(c.slot_pos[cfg.sink:])
    assert window_pos == list(range(c.frames - cfg.window, c.frames))
    # Sinks sit just before the oldest window frame, rotated from their fp32 un-rotated copies.
    cos, sin = m.rope.tables(torch.arange(window_pos[0] - cfg.sink, window_pos[0]))
    for layer in range(m.cfg.cache_layers):
        want = apply_rope(c.sink_raw[layer], cos, sin)
        torch.testing.assert_close(c.k[layer][:, :, :cfg.sink * c.N], want, atol=1e-5, rtol=1e-5)


def test_cache_state_restores_into_a_fresh_cache_that_goes_on_identically():
    """``state()`` / ``load_state()`` after the window has rolled and the sinks were re-rotated: a fresh cache
    loaded with it gives the same next frames as the original."""
    m = tiny_model()
    cfg = EngineConfig(steps=1, window=4, sink=2, fuse_cache_write=False)
    eng = Engine(m, cfg)
    eng.reset(1, seed=3)
    eng.prefill(frames(1, 3))
    for i in range(9):
        eng.step(i % 5)
    tensors, counters = eng.cache.state()
    tensors = {k: v.clone() for k, v in tensors.items()}
    noise = eng._gen.get_state()  # the same noise for both continuations
    want = torch.cat([eng.step(a) for a in (1, 2, 3)], 1)
    c = eng.cache
    fresh = KVCache(layers=c.L, batch=c.B, kv_heads=c.H, head_dim=c.D, tokens_per_frame=c.N, sink=c.S, window=c.W,
                    scratch_frames=c.scratch_frames, rope=m.rope, device=torch.device("cpu"), dtype=torch.float32)
    fresh.load_state(tensors, counters)
    assert fresh.frames == counters["frames"] and fresh.slot_pos == counters["slot_pos"]
    eng.cache = fresh
    eng._gen.set_state(noise)
    got = torch.cat([eng.step(a) for a in (1, 2, 3)], 1)
    torch.testing.assert_close(got, want)


def test_reset_drops_the_cache():
    m = tiny_model()
    eng = Engine(m, EngineConfig(steps=1))
    eng.reset(1, seed=1)
    eng.prefill(frames(1, 2))
    a = torch.cat([eng.step(1) for _ in range(3)], 1)
    for _ in range(5):
        eng.step(2)
    eng.reset(1, seed=1)
    assert eng.cache.frames == 0
    eng.prefill(frames(1, 2))
    b = torch.cat([eng.step(1) for _ in range(3)], 1)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bad_inputs_raise_clear_errors():
    m = tiny_model()
    eng = Engine(m, EngineConfig(chunk=1))
    eng.reset(2)
    with pytest.raises(ValueError, match="action index out of range"):
        eng.step(torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="expected \\(2, 1\\)"):
        eng.step(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="context frames have shape"):
        eng.prefill(torch.zeros(2, 1, 3, 8, 8))
    from worldsim.errors import ConfigError
    with pytest.raises(ConfigError, match="engine.window"):
        Engine(m, dataclasses.replace(EngineConfig(), chunk=4, window=2))


def test_step_lists_are_nested_and_shifted():
    assert student_sigmas(4, 1.0) == pytest.approx([1.0, 0.75, 0.5, 0.25])
    s4, s2, s1 = student_sigmas(4, 3.0), student_sigmas(2, 3.0), student_sigmas(1, 3.0)
    assert s1 == [1.0] and s2 == [s4[0], s4[2]]
    assert s4[1] == pytest.approx(3 * 0.75 / (1 + 2 * 0.75))


def test_anchor_frames_follow_chunks():
    clean = torch.arange(7, dtype=torch.float32).view(1, 7, 1, 1, 1).expand(1, 7, 3, 2, 2)
    first = torch.full((1, 3, 2, 2), -1.0)
    got = anchor_frames(clean, 3, first=first)[0, :, 0, 0, 0].tolist()
    assert got == [-1, -1, -1, 2, 2, 2, 5]  # frame i: the clean frame before its chunk
    assert anchor_frames(clean, 1)[0, :, 0, 0, 0].tolist() == [0, 0, 1, 2, 3, 4, 5]  # zeros before the clip


def test_two_anchor_frames_stack_newest_first():
    """anchor_history=2: each frame gets the clean frame before its chunk, then the one before that, on
    the channels; frames before the clip come from ``first`` (one frame or several, oldest first), else zeros;
    the engine's chunk_anchor gives the next chunk the same."""
    from worldsim.model.dit import chunk_anchor, keep_recent

    clean = torch.arange(1, 6, dtype=torch.float32).view(1, 5, 1, 1, 1).expand(1, 5, 3, 2, 2)
    pairs = lambda anc: [tuple(v) for v in anc[0, :, ::3, 0, 0].tolist()]  # (newest, older) per frame
    assert pairs(anchor_frames(clean, 1, history=2)) == [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3)]
    assert pairs(anchor_frames(clean, 2, history=2)) == [(0, 0), (0, 0), (2, 1), (2, 1), (4, 3)]
    one = torch.full((1, 3, 2, 2), 9.0)
    assert pairs(anchor_frames(clean, 1, first=one, history=2)) == [(9, 0), (1, 9), (2, 1), (3, 2), (4, 3)]
    two = torch.stack([torch.full((1, 3, 2, 2), 8.0), one], 1)  # oldest first
    assert pairs(anchor_frames(clean, 1, first=two, history=2))[:2] == [(9, 8), (1, 9)]
    assert anchor_frames(clean, 1, first=two).shape == (1, 5, 3, 2, 2)  # history 1: the newest only
    recent = keep_recent(keep_recent(None, clean[:, :1], 2), clean[:, 1:4], 2)
    assert pairs(chunk_anchor(recent, 2, 2)) == [(4, 3), (4, 3)]
    assert pairs(chunk_anchor(clean[:, :1], 1, 2)) == [(1, 0)]  # only one frame so far: zeros for the other


def assert_same_rollout(a, b):
    """Two models give the same 6 frames through the cached engine from the same context and noise."""
    outs = []
    for m in (a, b):
        eng = Engine(m, EngineConfig(steps=2, window=4, sink=1))
        eng.reset(2, seed=5)
        eng.prefill(frames(2, 3))
        outs.append(torch.cat([eng.step(i % 5) for i in range(6)], 1))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


def test_added_anchor_frames_start_as_the_same_model():
    """expand_anchor_history: a one-anchor student's weights in a two-anchor model compute the same
    frames (the new frame's weights start at zero); a wrong anchor width is refused by name."""
    from worldsim.model.dit import expand_anchor_history

    one = tiny_model(anchor="input")
    two = WorldDiT(dataclasses.replace(one.cfg, anchor_history=2)).eval()
    two.load_state_dict(expand_anchor_history(one.state_dict(), two.cfg, 1))
    assert_same_rollout(one, two)
    with pytest.raises(ValueError, match="anchor_history=2"):
        two(frames(1, 2), torch.rand(1, 2), torch.zeros(1, 2, dtype=torch.long), anchor=frames(1, 2))
    from worldsim.errors import ConfigError
    with pytest.raises(ConfigError, match="anchor_history"):
        ModelConfig(anchor=False, anchor_history=2).validate()


def test_added_refiner_starts_as_the_same_model_and_sees_pixels():
    """A refiner added to a trained student (model.refine) starts as that student (its last layer is
    zero); once trained, one pixel of the noisy frame or of an anchor reaches the output at that pixel,
    finer than the token head's patch. An old checkpoint's config without the field reads refine=0."""
    from worldsim.model.dit import upgrade_model_config

    plain = tiny_model(anchor="input2")
    torch.manual_seed(1)
    refined = WorldDiT(dataclasses.replace(plain.cfg, refine=6)).eval()
    state = {**refined.state_dict(), **plain.state_dict()}
    refined.load_state_dict(state)
    assert_same_rollout(plain, refined)
    with torch.no_grad():
        for p in refined.refiner.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x, sig, a = frames(1, 2), torch.rand(1, 2), torch.randint(0, 5, (1, 2))
    anc = anchor_frames(frames(1, 2, seed=1), 1, history=2)
    for name in ("x", "anchor"):
        x2, anc2 = x.clone(), anc.clone()
        (x2 if name == "x" else anc2)[0, 1, 0, 5, 5] += 1.0
        with torch.no_grad():
            d = (refined(x2, sig, a, anchor=anc2) - refined(x, sig, a, anchor=anc)).abs()[0, 1].sum(0)
            d_head = (plain(x2, sig, a, anchor=anc2) - plain(x, sig, a, anchor=anc)).abs()[0, 1].sum(0)
        assert (d - d_head)[1:10, 1:10].abs().sum() > 1e-3, name  # a pixel-level path around (5, 5)
    # The correction is local: with the head's frame fixed, one input pixel moves it within 8 px only.
    head, plane, c = torch.zeros(1, 1, 3, 32, 32), torch.zeros(1, 1, 9, 32, 32), torch.randn(1, 1, 32)
    plane2 = plane.clone()
    plane2[0, 0, :, 10, 10] = 1.0
    with torch.no_grad():
        d = (refined.refiner(head, [plane2], c) - refined.refiner(head, [plane], c)).abs()[0, 0].sum(0)
    assert d[2:19, 2:19].sum() > 1e-3 and d.sum() == d[2:19, 2:19].sum()
    assert upgrade_model_config({"dim": 32, "anchor": True, "anchor_history": 2}, "x")["refine"] == 0
    from worldsim.errors import ConfigError
    with pytest.raises(ConfigError, match="model.refine"):
        ModelConfig(refine=-1).validate()


def test_input_anchor_enters_the_tokens_not_the_output():
    # A fresh anchored model (zero output layer) predicts zeros whatever the anchor: nothing is added back
    # to the output; once trained its output depends on the anchor through the network.
    cfg = ModelConfig(resolution=16, patch=4, dim=32, depth=2, heads=2, kv_heads=1, num_actions=5, anchor=True,
                      anchor_history=1)
    torch.manual_seed(0)
    fresh = WorldDiT(cfg).eval()
    x, sig, a = torch.randn(2, 4, 3, 16, 16), torch.rand(2, 4), torch.randint(0, 5, (2, 4))
    with torch.no_grad():
        assert fresh(x, sig, a, anchor=frames(2, 4, seed=3)).abs().max() == 0
    m = tiny_model(anchor="input")
    with torch.no_grad():
        one, two = m(x, sig, a, anchor=frames(2, 4, seed=3)), m(x, sig, a, anchor=frames(2, 4, seed=4))
    assert (one - two).abs().max() > 1e-3  # the anchor reaches the output


@pytest.mark.parametrize("anchor", ANCHORS, ids=ANCHOR_IDS)
@pytest.mark.parametrize("temporal_every,depth", [(1, 2), (2, 2), (2, 3)], ids=lambda v: str(v))
def test_drop_first_gives_the_same_rows_and_cache(anchor, temporal_every, depth):
    """The fused cache write drops the clean frames' outputs: the kept rows and the cache it leaves
    equal a forward that computes everything (last block temporal, or frame-local at depth 3);
    without a cache, or dropping every frame, it refuses."""
    m = tiny_model(1, temporal_every, anchor=anchor)
    if depth != 2:
        cfg = dataclasses.replace(m.cfg, depth=depth)
        torch.manual_seed(0)
        m = WorldDiT(cfg).eval()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        assert not m.blocks[-1].attn.temporal
    mc = m.cfg
    x, a = frames(1, 3), torch.randint(0, 5, (1, 3))
    sig, anc = torch.rand(1, 3), anchor_frames(frames(1, 3, seed=1), 1, history=m.cfg.anchor_history)
    outs, caches = [], []
    for drop in (0, 2):
        cache = KVCache(layers=mc.cache_layers, batch=1, kv_heads=mc.kv_heads, head_dim=mc.head_dim,
                        tokens_per_frame=mc.tokens_per_frame, sink=1, window=4, scratch_frames=4, rope=m.rope,
                        device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            outs.append(m(x, sig, a, frame_pos=torch.arange(3), cache=cache, anchor=anc, drop_first=drop))
        caches.append(cache)
    full, dropped = outs
    assert dropped.shape[1] == 1
    torch.testing.assert_close(dropped, full[:, 2:], atol=1e-5, rtol=1e-5)
    for l in range(mc.cache_layers):
        torch.testing.assert_close(caches[1].k[l][:, :, :3 * mc.tokens_per_frame],
                                   caches[0].k[l][:, :, :3 * mc.tokens_per_frame])
    with pytest.raises(ValueError, match="drop_first"):
        m(x, sig, a, drop_first=1)
    with pytest.raises(ValueError, match="drop_first"):
        m(x, sig, a, cache=caches[0], drop_first=3)


def test_rotate_matches_apply_rope_and_has_gradients():
    """The model's complex-multiply rope is apply_rope (the KV cache's sink re-rotation uses that one),
    for fp32 and bf16 inputs, and gradients flow through it (training)."""
    from worldsim.model.rope import AxialRope, rotate

    rope = AxialRope(16, 4)
    pos = torch.tensor([0, 3, 10**6])
    cos, sin = rope.tables(pos)  # (3*16, 8)
    x = torch.randn(2, 48, 3, 16, requires_grad=True)
    got = rotate(x, rope.rotations(pos))
    want = apply_rope(x.transpose(1, 2), cos, sin).transpose(1, 2)  # apply_rope takes (..., L, D)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    xb = x.detach().to(torch.bfloat16)
    torch.testing.assert_close(rotate(xb, rope.rotations(pos)), apply_rope(xb.float().transpose(1, 2), cos, sin).transpose(1, 2),
                               atol=1e-6, rtol=1e-6)
    got.square().sum().backward()  # a rotation keeps norms: d|Rx|^2/dx = 2x
    torch.testing.assert_close(x.grad, 2 * x.detach(), atol=1e-5, rtol=1e-5)


def test_memoised_rotations_and_conditioning_match_direct_computation():
    """The rope memo returns what complex_rotations/tables compute (also past its LRU bound), and the
    conditioning memo serves terms of the current weights: a weight update is seen at once."""
    from worldsim.model.rope import MEMO_FRAMES, complex_rotations

    m = tiny_model()
    rope = m.rope
    for pos in ([3, 4], [4], list(range(MEMO_FRAMES + 5)), [3, 4]):
        p = torch.tensor(pos)
        want_c, want_s = rope._tables(p)
        got_c, got_s = rope.tables(p)
        torch.testing.assert_close(got_c, want_c, atol=0, rtol=0)
        torch.testing.assert_close(got_s, want_s, atol=0, rtol=0)
        torch.testing.assert_close(rope.rotations(p), complex_rotations(want_c, want_s), atol=0, rtol=0)
    a, s = torch.tensor([[1, 2]]), torch.tensor([[0.0, 0.7]])
    with torch.no_grad():
        first = m.conditioning(a, s)
        torch.testing.assert_close(first, m._conditioning(a, s), atol=1e-6, rtol=1e-6)
        assert torch.equal(m.conditioning(a, s), first)  # served from the memo, bit for bit
        m.ada[1].bias.add_(0.5)  # an optimizer step changes the weights in place
        torch.testing.assert_close(m.conditioning(a, s), m._conditioning(a, s), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(m.conditioning(a, s), first)
        m.to(torch.bfloat16)  # new weight tensors (a cast, a move): the memo starts again
        assert m.conditioning(a, s).dtype == torch.bfloat16
        torch.testing.assert_close(m.conditioning(a, s), m._conditioning(a, s), atol=0, rtol=0)


# -- oneDNN-packed linears (worldsim.engine.cpu_pack) ---------------------------------------------
from worldsim.engine import cpu_pack  # noqa: E402
from worldsim.engine.cpu_pack import is_packed, pack_linears, packing_available, unpack_linears  # noqa: E402

needs_packing = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed linear")


def _session(model, steps=2, n=6):
    eng = Engine(model, EngineConfig(steps=steps, window=4, sink=1))
    eng.reset(1, seed=3)
    eng.prefill(frames(1, 3))
    return torch.cat([eng.step(i % 5) for i in range(n)], 1)


@needs_packing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_packed_linears_give_the_same_frames(dtype):
    """Packed linears give the plain path's frames: to fp32 rounding, and in bf16 to its rounding (the
    fused GELU rounds once where the plain MLP rounds twice); the linears alone bit for bit."""
    m = tiny_model(anchor="input", temporal_every=2).to(dtype)
    x = torch.randn(2, 7, 32, dtype=dtype)
    with torch.no_grad():
        want, want_lin = _session(m), m.blocks[0].mlp[2](x.repeat(1, 1, 4))
        assert pack_linears(m) == sum(isinstance(x, torch.nn.Linear) for x in m.modules()) and is_packed(m)
        got, got_lin = _session(m), m.blocks[0].mlp[2](x.repeat(1, 1, 4))
        assert torch.equal(got_lin, want_lin)
        assert isinstance(m.blocks[0].mlp.__dict__.get("forward"), cpu_pack._FusedMLPForward)
        fused, plain = m.blocks[0].mlp(x), m.blocks[0].mlp[2](m.blocks[0].mlp[1](m.blocks[0].mlp[0](x)))
    tol = 1e-5 if dtype == torch.float32 else 0.02  # bf16: a few units of its 2^-8 relative step
    torch.testing.assert_close(fused, plain, atol=tol, rtol=tol)
    torch.testing.assert_close(got, want, atol=2 * tol, rtol=0)
    unpack_linears(m)
    assert not is_packed(m) and "forward" not in m.out.__dict__ and "forward" not in m.blocks[0].mlp.__dict__


@needs_packing
def test_packed_linears_follow_weight_updates_and_leave_training_alone():
    import copy
    import pickle

    m = tiny_model()
    pack_linears(m)
    x = torch.randn(2, 7, 32)
    lin = m.blocks[0].mlp[0]
    with torch.no_grad():
        first = lin(x)
        lin.weight.add_(0.5)  # an optimizer step in place: packed again on the next call
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), atol=0, rtol=0)
        assert not torch.allclose(lin(x), first)
    m.to(torch.bfloat16)  # a cast: new storage, packed again in the new dtype
    with torch.no_grad():
        xb = x.to(torch.bfloat16)
        assert torch.equal(lin(xb), torch.nn.functional.linear(xb, lin.weight, lin.bias))
    # Under autocast, the plain path (the packed op would compute in fp32, not bf16).
    m.float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16
    # With gradients (training), the plain path: the gradient reaches the weight.
    y = lin(x)
    y.sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    # A packed model pickles (a play worker's model goes to its child process) and deep-copies.
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        with torch.no_grad():
            torch.testing.assert_close(clone.blocks[0].mlp[0](x), lin(x), atol=0, rtol=0)
        assert is_packed(clone)
