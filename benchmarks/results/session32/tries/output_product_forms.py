import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
def t(f, n=100):
    for _ in range(10): f()
    ts=[]
    for _ in range(9):
        s=time.perf_counter()
        for _ in range(n): f()
        ts.append((time.perf_counter()-s)/n)
    ts.sort(); return ts[4]*1e6
for n,q,c,r in [(512,64,32,8),(256,64,64,16),(7840,8,16,4),(3360,8,16,4),(1400,64,32,4)]:
    X=torch.rand(n,q,c); L=torch.rand(n,r,c); R=torch.rand(n,r,c); b=torch.rand(c)
    A=lambda: torch.bmm(torch.bmm(X,L.transpose(1,2)),R).add_(b)
    B=lambda: torch.baddbmm(b,X,torch.bmm(L.transpose(1,2),R))
    assert torch.allclose(A(),B(),rtol=1e-4,atol=1e-3)
    print(n,q,c,r, f"factored {t(A):.1f} us, combined {t(B):.1f} us")
