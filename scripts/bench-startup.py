#!/usr/bin/env python3
"""Start-up time from exec to READY=1, measured the way systemd sees it:
a $NOTIFY_SOCKET datagram listener, the clock started just before exec.

Usage: bench-startup.py VOXGATE_BINARY WORKDIR [RUNS]
Starts a relay (and keeps it), then measures RUNS relay starts on another
port and RUNS gateway starts (ALSA null capture, playback off, sandbox on),
and prints median and p95 in milliseconds as JSON.
"""
import json, os, socket, statistics, subprocess, sys, time

binary, work = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 15
os.makedirs(work, exist_ok=True)

def free_udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]; s.close(); return p

def relay_cfg(port):
    path = os.path.join(work, f"relay-{port}.toml")
    with open(path, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nstate_dir = "state"\nrecordings = "rec"\n'
                f'server_name = "relay.voxgate.test"\n[telemetry]\nlog = "warn"\n'
                f'[privilege]\nstay_root = true\n[sandbox]\nread = ["{work}"]\nwrite = ["{work}"]\n')
    return path

def time_to_ready(args, env_extra):
    sock_path = os.path.join(work, "notify.sock")
    if os.path.exists(sock_path): os.unlink(sock_path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sock_path); s.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, **env_extra)
    t0 = time.perf_counter()
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            msg = s.recv(512).decode()
            if msg.startswith("READY=1"):
                return (time.perf_counter() - t0) * 1000
    finally:
        p.terminate(); p.wait(timeout=10); s.close()

main_port = free_udp()
cfg = relay_cfg(main_port)
if not os.path.exists(os.path.join(work, "state/ca.pem")):
    subprocess.run([binary, "relay", "init", "--config", cfg], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([binary, "relay", "dev-cert", "--config", cfg, "--device-id", "gw-start",
                    "--out", os.path.join(work, "dev")], check=True, stdout=subprocess.DEVNULL)
relay = subprocess.Popen([binary, "relay", "run", "--config", cfg], stderr=subprocess.DEVNULL)
time.sleep(0.5)
asound = os.path.join(work, "asound.conf")
with open(asound, "w") as f:
    f.write('pcm.startmic { type plug slave.pcm "null" hint { show on description "null mic" } }\n')
gw = os.path.join(work, "gw.toml")
with open(gw, "w") as f:
    f.write(f'device_id = "gw-start"\n[relay]\naddress = "127.0.0.1:{main_port}"\n'
            f'server_name = "relay.voxgate.test"\nca = "dev/ca.pem"\n[identity]\ncert = "dev/device.pem"\n'
            f'key = "dev/device.key"\n[capture]\ndevice = "startmic"\n[playback]\nenabled = false\n'
            f'[telemetry]\nlog = "warn"\n[privilege]\nstay_root = true\n[sandbox]\nread = ["{work}"]\n')
alsa = {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{asound}"}
try:
    rel = [time_to_ready([binary, "relay", "run", "--config", relay_cfg(free_udp())], {}) for _ in range(runs)]
    gws = [time_to_ready([binary, "run", "--config", gw], alsa) for _ in range(runs)]
finally:
    relay.terminate(); relay.wait(timeout=10)
def summary(v):
    v = sorted(v)
    return {"median_ms": round(statistics.median(v), 1), "p95_ms": round(v[int(0.95 * (len(v) - 1))], 1), "runs": len(v)}
print(json.dumps({"relay": summary(rel), "gateway": summary(gws)}))
