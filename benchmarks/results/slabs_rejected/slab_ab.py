import torch, time, statistics, sys
sys.path.insert(0, '/work/main/src')
from factorseg import allocator; allocator.tune()
from factorseg.models.layers.mixer import NMFMixer
torch.set_num_threads(1)
torch.manual_seed(0)
for c, n in ((32, 64), (32, 128), (64, 32)):
    mixer = NMFMixer(c, 3, head_dim=8, window_size=8, shifts=[0, 4]).eval()
    norm = torch.nn.LayerNorm(c)
    x = torch.randn(1, n, n, n, c).movedim(-1, 1)
    slab = lambda: mixer(x, norm=norm)
    orig = NMFMixer._slabs
    def whole():
        NMFMixer._slabs = lambda *a: None
        try: return mixer(x, norm=norm)
        finally: NMFMixer._slabs = orig
    with torch.no_grad():
        assert torch.allclose(slab(), whole(), atol=1e-5)
        T = {'whole': [], 'slabs': []}
        for f in (whole, slab): f()
        for _ in range(5):
            for k, f in (('whole', whole), ('slabs', slab)):
                a = time.perf_counter(); f(); T[k].append(time.perf_counter() - a)
    m = {k: statistics.median(v) * 1000 for k, v in T.items()}
    print(f'C={c} {n}^3 whole {m["whole"]:.1f} ms slabs {m["slabs"]:.1f} ms ratio {m["slabs"]/m["whole"]:.3f}')
