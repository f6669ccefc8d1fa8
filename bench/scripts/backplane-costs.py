#!/usr/bin/env python3
"""The backplane's per-message costs, for `roomcast plan --nodes N`: Redis CPU per publish
with one and with two nodes subscribed to the room, the publishing node's CPU and a
receiving node's CPU per message (each node has one member in the room and one shard,
pinned to CPU 0; Redis is pinned to CPU 1; one WebSocket publisher paced at RATE msg/s).

    .venv-py3/bin/python bench/scripts/backplane-costs.py [MESSAGES] [RATE]

Needs `redis-server` and `cargo build --release`. Loopback only; every process it starts is
stopped at the end.
"""
import asyncio, json, os, subprocess, sys, time, websockets
ROOMCAST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/release/roomcast")
TICK = os.sysconf("SC_CLK_TCK")
def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK
def start_node(port, rport, nid):
    p = subprocess.Popen(["taskset","-c","0",ROOMCAST,"serve","--listen",f"127.0.0.1:{port}","--redis",f"redis://127.0.0.1:{rport}","--node-id",nid,"--rate","0","--shards","1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.readline(); return p
async def run(k, n, rate, rport):
    pa, pb = free_port(), free_port()
    a = start_node(pa, rport, "a"); b = start_node(pb, rport, "b")
    rpid = int(subprocess.check_output(["pgrep","-f",f"redis-server.*:{rport}"]).split()[0])
    try:
        ma = await websockets.connect(f"ws://127.0.0.1:{pa}/ws?room=m", max_queue=None)
        await ma.recv()
        mems=[ma]
        if k == 2:
            mb = await websockets.connect(f"ws://127.0.0.1:{pb}/ws?room=m", max_queue=None); await mb.recv(); mems.append(mb)
        pub = await websockets.connect(f"ws://127.0.0.1:{pa}/ws")
        await asyncio.sleep(0.3)
        c0 = (cpu(rpid), cpu(a.pid), cpu(b.pid))
        async def count(ws):
            got=0
            while got < n:
                m = json.loads(await ws.recv())
                if m.get("op")=="msg": got+=1
        tasks=[asyncio.create_task(count(w)) for w in mems]
        t0=time.time(); per=0.01; batch=int(rate*per)
        for i in range(0,n,batch):
            for j in range(batch):
                await pub.send('{"op":"pub","room":"m","data":{"i":%d,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}' % (i+j))
            d = t0 + (i+batch)/rate - time.time()
            if d>0: await asyncio.sleep(d)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        c1 = (cpu(rpid), cpu(a.pid), cpu(b.pid))
        r = [(c1[i]-c0[i])/n*1e6 for i in range(3)]
        print(f"k={k} n={n} rate={rate}: redis {r[0]:.2f} us/msg, node a {r[1]:.2f} us/msg, node b {r[2]:.2f} us/msg")
    finally:
        a.kill(); b.kill(); a.wait(); b.wait()
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000

async def main():
    rport = free_port()
    subprocess.run(["redis-server","--port",str(rport),"--save","","--appendonly","no","--daemonize","yes","--logfile","/dev/null"])
    subprocess.run(["taskset","-pc","1",subprocess.check_output(["pgrep","-f",f"redis-server.*:{rport}"]).split()[0].decode()],stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        for rep in range(2):
            for k in (1,2):
                await run(k, N, RATE, rport)
    finally:
        subprocess.run(["redis-cli","-p",str(rport),"shutdown","nosave"])
asyncio.run(main())
