"""The side-by-side bench: ``python -m bench.run [--with-litellm] [--duration 10] [--quick] [--out DIR]``.

Starts one fake upstream and, one after another, the systems in front of it (direct, the bare Sanic
proxy, nginx, the gateway with every feature on, gateway variants of other revisions, LiteLLM), and
measures each the same way in the same run: throughput at c=32 (non-stream and stream), latency at
c=1, stream TTFB, CPU seconds per 1,000 requests, RSS per 1,000 open streams, CPU per relayed event
of long streams, stream capacity, and for the gateway the cost of a refused (429) request. Writes
``<timestamp>.json``, ``.md`` and ``.png`` to ``--out`` (default ``bench/results``). Load generators
are pinned to one half of the CPUs, the system under test and the upstream to the other half.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from . import ab, bakeoff, capacity, fidelity, machine, procs, report, systems, variants, wrk
from .loads import CAPACITY_CHUNKS, CAPACITY_DELAY, STREAM_CHUNKS, bodies, loadgen
from .procs import ROOT, cmdline, cpu_plan, cpu_seconds, free_port, raise_nofile, rss_bytes
from .systems import Context, System, Unavailable

CONCURRENCY = 32
# report.TWO_WORKERS: the gateway with 2 workers, only its throughput phases (against the 1-worker gateway's);
# report.BARE_TWO_WORKERS: the bare proxy with 2 workers, the same phases: what two workers cost by themselves
ALL_SYSTEMS = ("direct", "bare", report.BARE_TWO_WORKERS, "nginx", "gateway", report.TWO_WORKERS, "litellm")
# The gateway's other client APIs, loaded on the same gateway after chat: the route replacing
# /chat/completions, the key's header (empty: chat's), and the loads measured (BODIES' keys).
CLIENT_APIS = {
    "responses": ("/responses", {}, ("non_stream", "non_stream_stored", "stream")),
    "messages": ("/messages", {"x-api-key": "{key}"}, ("non_stream", "stream")),
}
BODIES = {"non_stream": "plain", "non_stream_stored": "plain_stored", "stream": "stream"}
CHAT_LOADS = ("non_stream", "stream")  # the loads of a client API that chat has too
OTHER_CLIENTS = ("httpx", "httpx-aiohttp")
HIDDEN = (systems.UPSTREAM_MODEL, "fp_fake123")
CAPACITY_BOUND_MS = 50.0  # added inter-event gap p99 a held stream may see


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def per_thousand(before: dict[int, int], peak: dict[int, int], streams: int) -> dict:
    """What the largest process grew by while ``streams`` were open, scaled to 1,000 streams."""
    if not peak or not streams:
        return {"rss_per_1000_streams_mb": None}
    pid = max(peak, key=peak.get)
    grown = (peak[pid] - before.get(pid, 0)) / 2**20
    return {"rss_largest_growth_mb": round(grown, 1), "rss_per_1000_streams_mb": round(grown / streams * 1000, 1)}


def refused_count(result: dict) -> int:
    """429 answers of a load phase: wrk counts every non-2xx/3xx as a status error, the load
    generator counts by status code."""
    if "statuses" in result:
        return result["statuses"].get("429", 0)
    return (result.get("error_detail") or {}).get("status", 0)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.gen_cpus, self.sut_cpus = cpu_plan(not args.no_pin)
        self.work = Path(tempfile.mkdtemp(prefix="zowy-bench-"))
        self.ctx = Context(self.work, self.sut_cpus, install=not args.no_install, log=log,
                           gateway_tree=(args.gateway_tree or ROOT).resolve())
        self.wrk = None
        if args.generator in ("auto", "wrk"):
            self.wrk = wrk.ensure(install=not args.no_install, log=log)
            if self.wrk is None and args.generator == "wrk":
                raise SystemExit("--generator wrk: wrk is not available")
        self.bodies = bodies(self.work, args.hold_chunks, args.hold_delay, args.long_chunks, args.long_delay)
        self.trees = variants.Trees(self.work, self.ctx.gateway_tree)
        self.results: dict = {}

    # ------------------------------------------------------------ generators

    def _preexec(self):
        return procs.preexec(self.gen_cpus)

    def loadgen(self, mode: str, system: System, body: str, *opts: str, timeout: float = 600) -> dict:
        return loadgen(mode, system.url, self.bodies[body], system.headers, opts, self.gen_cpus, timeout)

    @staticmethod
    def _header_args(system: System) -> list[str]:
        out = []
        for k, v in system.headers.items():
            out += ["--header", f"{k}: {v}"]
        return out

    def _lua(self, system: System, body: str) -> Path:
        path = self.work / f"wrk-{re.sub(r'[^A-Za-z0-9._@-]', '_', system.key)}-{body}.lua"  # gateway@<dir> names a path
        if not path.exists():
            wrk.script(path, self.bodies[body].read_bytes(), {"Content-Type": "application/json", **system.headers})
        return path

    def throughput(self, system: System, body: str, seconds: float, warmup: bool = False) -> dict:
        if self.wrk:
            return wrk.run(self.wrk, system.url, self._lua(system, body), CONCURRENCY, seconds, self.gen_cpus)
        return self.loadgen("throughput", system, body, "--concurrency", str(CONCURRENCY),
                            "--duration", str(seconds))

    def accounted(self, system: System, run, count=None) -> dict:
        """Run a load phase and add the CPU seconds the system, the upstream and the rest used;
        ``count(result)`` the units (events, refusals) to divide the system's CPU by, when not requests."""
        sys_pids = system.pids()
        upstream = self.ctx.tls_upstream if system.info.get("tls") else self.ctx.upstream
        up_pids = [] if system.key == "direct" else upstream.pids()
        c0, u0 = cpu_seconds(sys_pids), cpu_seconds(up_pids)
        busy0 = machine.cpu_times()
        ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        result = run()
        c1, u1 = cpu_seconds(sys_pids), cpu_seconds(up_pids)
        busy1 = machine.cpu_times()
        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        gen = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
        me = (me1.ru_utime + me1.ru_stime) - (me0.ru_utime + me0.ru_stime)
        ok = result.get("ok") or 0
        cpu = {"system_s": round(c1 - c0, 3), "upstream_s": round(u1 - u0, 3) if up_pids else None,
               "generator_s": round(gen, 3),
               "per_1000_requests_s": round((c1 - c0) / ok * 1000, 4) if ok else None}
        if busy0 is not None and busy1 is not None:
            task = busy1["task"] - busy0["task"]
            cpu["machine_task_s"] = round(task, 3)
            cpu["irq_softirq_s"] = round(busy1["irq"] - busy0["irq"], 3)
            cpu["steal_s"] = round(busy1["steal"] - busy0["steal"], 3)
            cpu["other_processes_s"] = round(max(0.0, task - (c1 - c0) - (u1 - u0) - gen - me), 3)
        if count is not None:
            n = count(result) or 0
            cpu["units"] = n
            cpu["per_unit_us"] = round((c1 - c0) / n * 1e6, 3) if n else None
        result["cpu"] = cpu
        return result

    # ------------------------------------------------------------ phases

    def rss(self, system: System, per: dict[int, int] | None = None) -> dict:
        per = rss_bytes(system.pids()) if per is None else per
        return {"total_mb": round(sum(per.values()) / 2**20, 1),
                "largest_process_mb": round(max(per.values(), default=0) / 2**20, 1),
                "processes": {f"{pid} {cmdline(pid)[:80]}": round(v / 2**20, 1) for pid, v in per.items()}}

    def open_streams(self, system: System) -> dict:
        n = self.args.streams
        args = [sys.executable, "-m", "bench.loadgen", "hold", "--url", system.url,
                "--body-file", str(self.bodies["hold"]), *self._header_args(system), "--streams", str(n),
                "--open-timeout", str(self.args.open_timeout), "--hold", "120"]
        before = rss_bytes(system.pids())
        proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=self._preexec())
        ready = None
        samples = []
        try:
            for line in proc.stdout:
                if line.startswith("READY "):
                    ready = json.loads(line[6:])
                    break
            if ready is not None:
                for _ in range(1 if self.args.quick else 3):
                    time.sleep(0.3 if self.args.quick else 0.5)
                    samples.append(rss_bytes(system.pids()))
            proc.stdin.write("go\n")
            proc.stdin.flush()
            result = None
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line[7:])
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not samples or result is None:
            return {"error": f"hold failed: {proc.stderr.read()[-1500:] if proc.stderr else ''}"}
        peak = max(samples, key=lambda per: sum(per.values()))
        return {"generator": "aiohttp-loadgen", "requested": n, **{k: result[k] for k in (
                "open", "open_at_release", "failed", "finished_early", "open_seconds")},
                "ttfb_under_load": result["ttfb"], "rss": self.rss(system, peak), "rss_before": self.rss(system, before),
                "rss_total_mb": round(sum(peak.values()) / 2**20, 1),
                "rss_largest_process_mb": round(max(peak.values(), default=0) / 2**20, 1),
                **per_thousand(before, peak, ready["open"])}

    def settle(self, timeout: float = 60.0) -> dict:
        """Wait until the upstream has no open requests left (the system passed on the disconnects)."""
        started = time.monotonic()
        urls = [(f"http://127.0.0.1:{self.ctx.upstream_port}/_fake/stats", None)]
        if self.ctx.tls_upstream is not None:
            urls.append((f"https://127.0.0.1:{self.ctx.tls_port}/_fake/stats",
                         ssl.create_default_context(cafile=str(self.ctx.tls_ca))))
        open_ = None
        while time.monotonic() - started < timeout:
            try:
                open_ = 0
                for url, context in urls:
                    with urllib.request.urlopen(url, timeout=5, context=context) as r:
                        open_ += json.loads(r.read())["open"]
            except OSError:
                open_ = None
            if open_ == 0:
                break
            time.sleep(0.25)
        return {"upstream_open_after": open_, "seconds": round(time.monotonic() - started, 2)}

    def measure(self, system: System, full: bool = True) -> dict:
        a = self.args
        r: dict = {"key": system.key, "label": system.label, "info": system.info}
        log(f"{system.key}: warm-up")
        for body in ("plain", "stream"):
            if a.warmup >= 1 or not self.wrk:
                self.throughput(system, body, a.warmup)
            else:  # wrk runs whole seconds only
                self.loadgen("throughput", system, body, "--concurrency", str(CONCURRENCY), "--duration", str(a.warmup))
        r["rss_idle"] = self.rss(system)
        log(f"{system.key}: throughput c={CONCURRENCY} non-stream, {a.duration}s")
        r["throughput"] = {"non_stream": self.accounted(system, lambda: self.throughput(system, "plain", a.duration))}
        log(f"{system.key}: throughput c={CONCURRENCY} stream, {a.duration}s")
        r["throughput"]["stream"] = self.accounted(system, lambda: self.throughput(system, "stream", a.duration))
        if not full:
            return r
        if a.lean:
            r.update(self.long_stream_phases(system))
            r.update(self.client_apis(system))
            r["alive"] = system.alive()
            return r
        lat = str(a.latency_duration)
        # Latency at c=1 is paired: the direct upstream is measured right before the system, so the
        # added latency compares two back-to-back samples, not samples minutes apart.
        direct = systems.direct(self.ctx)
        pairs = [(direct, "latency_c1_direct_paired"), (system, "latency_c1")] if system.key != "direct" and not a.quick else [(system, "latency_c1")]
        log(f"{system.key}: latency c=1, {lat}s non-stream + {lat}s stream"
            + (" (each after the same on direct)" if len(pairs) > 1 else ""))
        for target, field in pairs:
            r[field] = {
                "non_stream": self.loadgen("latency", target, "plain", "--duration", lat, "--warmup", "0.3"),
                "stream": self.loadgen("latency", target, "stream", "--duration", lat, "--warmup", "0.3"),
            }
        if self.wrk and not a.quick:
            for target, field in pairs:
                r[field + "_wrk" if field == "latency_c1" else "latency_c1_wrk_direct_paired"] = wrk.run(
                    self.wrk, target.url, self._lua(target, "plain"), 1, max(1, int(a.latency_duration)), self.gen_cpus)
        log(f"{system.key}: {a.streams} open streams")
        r["open_streams"] = self.open_streams(system)
        r["settle"] = self.settle()
        r.update(self.long_stream_phases(system))
        r.update(self.client_apis(system))
        if system.limited_headers:
            log(f"{system.key}: refused (429) requests c={CONCURRENCY}, {a.duration}s")
            r["refusal"] = self.refusal(system)
        if a.capacity:
            log(f"{system.key}: capacity search (<= {a.capacity_max} streams, {a.capacity_budget:g}s budget)")
            r["capacity"] = self.capacity(system)
        r["alive"] = system.alive()
        return r

    def long_stream_phases(self, system: System) -> dict:
        """``long_streams`` (more events than one core relays on time: a share of that core) and
        ``paced_streams`` (fewer, every event on time, one per read as real streams come), each
        with what it measured and the settle after it."""
        a = self.args
        out = {}
        for name, streams in (("long_streams", a.long_streams), ("paced_streams", a.paced_streams)):
            if streams:
                log(f"{system.key}: {streams} long streams ({a.long_chunks} events {a.long_delay * 1000:g} ms apart), "
                    f"started for {a.duration}s")
                out[name] = self.long_streams(system, streams)
                out[name]["settle"] = self.settle()
        return out

    def long_streams(self, system: System, streams: int) -> dict:
        """Many long streams: CPU per relayed event (events counted by the client) and the gaps."""
        a = self.args

        def run() -> dict:
            return self.loadgen("streams", system, "long", "--streams", str(streams), "--duration",
                                str(a.duration), "--spacing", str(a.long_delay), "--tail", "60")

        result = self.accounted(system, run, count=lambda r: r.get("events"))
        result["cpu_per_event_us"] = result["cpu"]["per_unit_us"]
        return result

    def client_apis(self, system: System) -> dict:
        """The gateway's other client APIs (those not switched off), each under its name."""
        if not system.key.startswith("gateway"):
            return {}
        return {api: self.client_api(system, api) for api in CLIENT_APIS if getattr(self.args, api)}

    def client_api(self, system: System, api: str) -> dict:
        """A client API on the same gateway, right after its chat phases: the same loads through its
        route, for CPU per request and per relayed event against chat in the same run. Each load
        chat also has is measured through chat right before (``chat_paired``): the API is divided by
        chat in the same state of the worker and its store, not by chat minutes and phases earlier
        (the long streams too)."""
        a = self.args
        path, headers, loads = CLIENT_APIS[api]
        token = system.headers.get("Authorization", "").removeprefix("Bearer ")
        other = dataclasses.replace(system, key=f"{system.key}-{api}", url=system.url.replace("/chat/completions", path),
                                    headers={k: v.format(key=token) for k, v in headers.items()} or system.headers,
                                    owned=False)
        out: dict = {"throughput": {}, "chat_paired": {}}
        for name in loads:
            body = f"{api}_{BODIES[name]}"
            if name in CHAT_LOADS:
                log(f"{system.key}: throughput c={CONCURRENCY} {name} (chat, paired with {api}), {a.duration}s")
                out["chat_paired"][name] = self.accounted(
                    system, lambda name=name: self.throughput(system, BODIES[name], a.duration))
            log(f"{other.key}: throughput c={CONCURRENCY} {name}, {a.duration}s")
            if a.warmup >= 1 or not self.wrk:
                self.throughput(other, body, a.warmup)
            out["throughput"][name] = self.accounted(other, lambda body=body: self.throughput(other, body, a.duration))
        if a.long_streams:
            log(f"{system.key}: {a.long_streams} long streams (chat, paired with {api}), started for {a.duration}s")
            out["chat_paired"]["long_streams"] = self.long_streams(system, a.long_streams)
            out["chat_paired"]["long_streams"]["settle"] = self.settle()
            log(f"{other.key}: {a.long_streams} long streams, started for {a.duration}s")

            def run() -> dict:
                return self.loadgen("streams", other, f"{api}_long", "--streams", str(a.long_streams), "--duration",
                                    str(a.duration), "--spacing", str(a.long_delay), "--tail", "60")

            out["long_streams"] = self.accounted(other, run, count=lambda r: r.get("events"))
            out["long_streams"]["cpu_per_event_us"] = out["long_streams"]["cpu"]["per_unit_us"]
            out["long_streams"]["settle"] = self.settle()
        return out

    def refusal(self, system: System) -> dict:
        """The limited key's minute window filled, then the same non-stream load as the throughput phase."""
        limited = dataclasses.replace(system, key=f"{system.key}-limited", headers=system.limited_headers, owned=False)
        first = [self.status(limited, "plain") for _ in range(3)]
        result = self.accounted(limited, lambda: self.throughput(limited, "plain", self.args.duration),
                                count=refused_count)
        refused, seconds = result["cpu"]["units"], result.get("duration_s")
        return {"first_statuses": first, "status_after": self.status(limited, "plain"), "load": result,
                "refused": refused, "cpu_per_refused_us": result["cpu"]["per_unit_us"],
                "refused_per_s": round(refused / seconds, 1) if seconds else None}

    def status(self, system: System, body: str) -> int:
        request = urllib.request.Request(system.url, data=self.bodies[body].read_bytes(), method="POST",
                                         headers={"Content-Type": "application/json", **system.headers})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as exc:
            exc.read()
            return exc.code

    def capacity(self, system: System) -> dict:
        a = self.args
        settle, open_timeout = a.capacity_settle, a.capacity_open_timeout

        def probe(streams: int) -> dict:
            started = time.monotonic()
            try:
                result = self.accounted(system, lambda: self.loadgen(
                    "streams", system, "capacity", "--streams", str(streams), "--window", str(a.capacity_window),
                    "--settle", str(settle), "--spacing", str(CAPACITY_DELAY), "--open-timeout", str(open_timeout),
                    timeout=open_timeout + settle + a.capacity_window + 60))
                result["system_cpu_share"] = round(result["cpu"]["system_s"] / (time.monotonic() - started), 3)
            except Exception as exc:
                result = {"error": str(exc)[-300:]}
            result["settle"] = self.settle()
            gaps = result.get("gaps") or {}
            log(f"{system.key}: capacity probe {streams} streams: ready {result.get('ready')}, failed "
                f"{result.get('failed')}, added gap p99 {gaps.get('added_p99_ms')} ms, client CPU "
                f"{result.get('client_cpu_share')}, system CPU {result.get('system_cpu_share')}")
            return result

        return capacity.search(probe, min(a.capacity_start, a.capacity_max), a.capacity_max, a.capacity_budget,
                               CAPACITY_BOUND_MS)

    # ------------------------------------------------------------ the run

    def run(self) -> dict:
        a = self.args
        wanted = a.systems
        log(f"work dir {self.work}; CPUs: load generators {sorted(self.gen_cpus) if self.gen_cpus else 'any'}, "
            f"systems + upstream {sorted(self.sut_cpus) if self.sut_cpus else 'any'}")
        info = machine.info()
        info["tools"] = {"wrk": wrk.version(self.wrk) if self.wrk else None,
                         "nginx": systems.nginx_version(systems.nginx_binary()) if systems.nginx_binary() else None,
                         "litellm": systems.litellm_version()}
        out: dict = {
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": info,
            "config": {
                "duration_s": a.duration, "latency_duration_s": a.latency_duration, "warmup_s": a.warmup,
                "concurrency": CONCURRENCY, "open_streams": a.streams, "quick": a.quick, "nice": a.nice,
                "hold_directive": {"chunks": a.hold_chunks, "delay_s": a.hold_delay},
                "stream_chunks": STREAM_CHUNKS,
                "long_streams": {"streams": a.long_streams, "chunks": a.long_chunks, "delay_s": a.long_delay},
                "paced_streams": {"streams": a.paced_streams, "chunks": a.long_chunks, "delay_s": a.long_delay},
                "capacity": {"enabled": a.capacity, "chunks": CAPACITY_CHUNKS, "delay_s": CAPACITY_DELAY,
                             "bound_ms": CAPACITY_BOUND_MS, "max": a.capacity_max, "start": a.capacity_start,
                             "budget_s": a.capacity_budget, "window_s": a.capacity_window,
                             "settle_s": a.capacity_settle, "open_timeout_s": a.capacity_open_timeout},
                "throughput_generator": wrk.NAME if self.wrk else "aiohttp-loadgen",
                "latency_generator": "aiohttp-loadgen",
                "pinning": {"generators": sorted(self.gen_cpus) if self.gen_cpus else None,
                            "systems_and_upstream": sorted(self.sut_cpus) if self.sut_cpus else None,
                            "upstream": a.upstream_on},
                "payloads": {k: p.read_text() for k, p in self.bodies.items()},
            },
            "systems": {}, "skipped": {}, "client_comparison": {},
        }
        upstream_cpus = self.gen_cpus if a.upstream_on == "generators" else None
        systems.start_upstream(self.ctx, upstream_cpus)
        try:
            if any((bakeoff.parse(k) or bakeoff.Candidate("", None, False)).tls for k in wanted):
                systems.start_tls_upstream(self.ctx, upstream_cpus)
            for key in wanted:
                self._one(key, out)
                if key == "bare" and a.clients:
                    for client in a.clients:
                        self._one("bare-" + client, out, client=client)
        finally:
            for upstream in (self.ctx.upstream, self.ctx.tls_upstream):
                if upstream is not None:
                    upstream.stop()
            self.trees.close()
        if a.rounds:
            out["interleaved"] = self.interleaved()
        if a.micro:
            out["micro"] = self.micro()
        if a.conformance:
            out["conformance"] = self.conformance()
        out["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out["machine"]["loadavg_at_end"] = machine.loadavg()
        report.analyse(out)
        return out

    def _one(self, key: str, out: dict, client: str | None = None) -> None:
        system = None
        try:
            log(f"starting {key}")
            candidate = bakeoff.parse(key)
            if candidate is not None and candidate.kind == "bare":
                system = systems.bare(self.ctx, transport=candidate.transport, tls=candidate.tls, key=key)
            elif candidate is not None:
                tee_port = free_port()
                tree, tree_info = self.trees.tree("gateway")
                transport = bakeoff.TRANSPORTS[candidate.transport] if candidate.transport else None
                system = systems.gateway(self.ctx, tee_port, key, tree, tree_info, transport, candidate.tls)
            elif key == "direct":
                system = systems.direct(self.ctx)
            elif key == report.BARE_TWO_WORKERS:
                system = systems.bare(self.ctx, key=key, workers=2)
            elif key.startswith("bare"):
                system = systems.bare(self.ctx, client or "aiohttp")
            elif key == "nginx":
                system = systems.nginx(self.ctx)
            elif variants.is_gateway(key):
                tee_port = free_port()
                tree, tree_info = self.trees.tree(key)
                system = systems.gateway(self.ctx, tee_port, key, tree, tree_info)
            elif key == report.TWO_WORKERS:
                tree, tree_info = self.trees.tree("gateway")
                system = systems.gateway(self.ctx, free_port(), key, tree, tree_info, workers=2)
            elif key == "litellm":
                system = systems.litellm(self.ctx)
            else:
                raise SystemExit(f"unknown system {key!r}")
            if client:
                out["client_comparison"][client] = self.measure(system, full=False)
                return
            if key in (report.TWO_WORKERS, report.BARE_TWO_WORKERS):
                out["systems"][key] = self.measure(system, full=False)
                return
            result = self.measure(system)
            if variants.is_gateway(key) or (candidate is not None and candidate.kind == "gateway"):
                log(f"{key}: stream fidelity check")
                result["fidelity"] = fidelity.check(
                    system.url, system.headers, systems.FIDELITY_MODEL, tee_port, self.ctx.upstream_port, HIDDEN)
                if self.args.profile and key == "gateway":
                    result["profile"] = self.profile(system)
            out["systems"][key] = result
        except Unavailable as exc:
            log(f"{key}: skipped: {exc}")
            out["skipped"][key] = str(exc)
        except Exception as exc:
            log(f"{key}: FAILED: {exc}")
            detail = traceback.format_exc()
            if system is not None:
                detail += "\n" + "\n".join(p.log() for p in system.procs)
            out["skipped"][key] = f"failed: {exc}"
            out.setdefault("errors", {})[key] = detail[-4000:]
        finally:
            if system is not None:
                system.stop()
                self.settle(timeout=30)

    def profile(self, system: System) -> dict:
        """py-spy over the gateway worker during the non-stream and stream throughput phases
        (``--profile``): samples of the thread holding the GIL, with the fake upstream moved to the
        generators' CPUs meanwhile. py-spy samples wall time: with the upstream on the worker's core,
        the worker's socket writes collect the samples of the upstream it wakes."""
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.path.exists(pyspy):
            return {"error": "py-spy is not installed"}
        pid = max(system.pids(), key=lambda p: cpu_seconds([p]))  # the busiest process: the worker
        upstream = self.ctx.upstream.pids() if self.ctx.upstream is not None else []
        results = {}
        _pin(upstream, self.gen_cpus)
        try:
            for body in ("plain", "stream"):
                svg = self.args.out / f"{self.stamp}-profile-{body}.txt"
                spy = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--duration", str(int(self.args.duration)),
                                        "--rate", "250", "--format", "raw", "--output", str(svg), "--nonblocking",
                                        "--full-filenames", "--gil"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                time.sleep(0.5)
                self.throughput(system, body, self.args.duration)
                spy.wait(60)
                results[body] = report.top_frames(svg) if svg.exists() else {"error": spy.stderr.read()[-500:]}
                results[body]["raw_file"] = str(svg)
        finally:
            _pin(upstream, self.sut_cpus)
        return results

    def interleaved(self) -> dict | None:
        """The gateway and the bare proxy (and their 2-worker runs, when this run has them), started
        afresh and measured in rounds that alternate their order (bench/ab.py): non-stream, 10-event
        streams, long streams, and the gateway's refusals. One phase per system, minutes apart, moves
        by a fifth between runs; the ratios between systems read from these rounds' medians."""
        a = self.args
        keys = [k for k in ("gateway", "bare", report.TWO_WORKERS, report.BARE_TWO_WORKERS) if k in a.systems]
        if "gateway" not in keys or "bare" not in keys:
            return None
        binary = self.wrk or wrk.ensure(install=not a.no_install, log=log)
        if binary is None:
            log("interleaved: skipped, the rounds run wrk and it is not installed")
            return {"error": "skipped: the rounds run wrk, which is not installed (make bench installs it)"}
        phases = ["plain", "stream", "refused"] + (["long"] if a.long_streams else [])
        log(f"interleaved: {', '.join(keys)}; {', '.join(phases)}; {a.rounds} rounds, {a.round_seconds} s each")
        only = {k: ["plain", "stream"] for k in (report.TWO_WORKERS, report.BARE_TWO_WORKERS)}
        try:
            rounds, _ = ab.measure(argparse.Namespace(
                systems=keys, phases=phases, rounds=a.rounds, seconds=a.round_seconds, long_streams=a.long_streams,
                upstream_on=a.upstream_on, syscalls=False, only=only, wrk_binary=binary))
        except (Exception, SystemExit) as exc:
            log(f"interleaved: FAILED: {exc}")
            return {"error": f"failed: {str(exc)[-2000:]}"}
        out: dict = {"rounds": a.rounds, "seconds": a.round_seconds, "long_streams": a.long_streams, "phases": {}}
        for (key, phase), values in rounds.items():
            cpu, rps = [c for c, _ in values], [r for _, r in values]
            out["phases"].setdefault(phase, {})[key] = {
                "cpu_us": round(statistics.median(cpu), 1), "rps": round(statistics.median(rps), 1),
                "cpu_rounds_us": [round(c, 1) for c in cpu], "rps_rounds": [round(r, 1) for r in rps]}
        return out

    def conformance(self) -> dict:
        """The recorded upstream traffic replayed through this checkout's gateway to the OpenAI SDK
        (tests/conformance/test_recordings.py): how many recordings pass."""
        log("conformance recordings")
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "tests/conformance/test_recordings.py", "-q",
                                   "-p", "no:cacheprovider", "-o", "addopts="], cwd=self.ctx.gateway_tree,
                                  capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"error": str(exc)}
        tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
        counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", tail)}
        if not counts:
            return {"error": tail[-500:]}
        return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0)
                + counts.get("errors", 0), "skipped": counts.get("skipped", 0), "summary": tail,
                "failures": [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))][:20]}

    def micro(self) -> dict:
        log("micro-benchmarks")
        target = self.work / "micro.json"
        args = [sys.executable, "-m", "bench.micro", "--json", str(target)] + (["--quick"] if self.args.quick else [])
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900,
                             preexec_fn=procs.preexec(self.sut_cpus))
        if out.returncode != 0 or not target.exists():
            return {"error": out.stderr[-2000:]}
        return json.loads(target.read_text())


def _pin(pids: list[int], cpus: set[int] | None) -> None:
    """Move running processes (every thread of each) to ``cpus``; nothing when unpinned."""
    if not cpus:
        return
    for pid in pids:
        try:
            for thread in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(thread), cpus)
        except OSError:
            pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--with-litellm", action="store_true", help="also measure the LiteLLM proxy (installed on demand)")
    p.add_argument("--duration", type=float, help="seconds of each throughput phase (default 10; --quick 1)")
    p.add_argument("--quick", action="store_true", help="a seconds-long run: short phases, few open streams")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON/MD/PNG go")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(ALL_SYSTEMS)}; gateway@<rev> (a git "
                                     "revision or a directory) adds the gateway of that revision")
    p.add_argument("--clients", help="bare-proxy client comparison: comma-separated of "
                                     f"{','.join(OTHER_CLIENTS)}, or 'none' (default: both; none with --quick)")
    p.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto",
                   help="throughput load generator (auto: wrk when installed or installable)")
    p.add_argument("--streams", type=int, help="open streams for the RSS figure (default 1000; --quick 20)")
    p.add_argument("--gateway-tree", type=Path,
                   help="run the key 'gateway' from this source tree (see also gateway@<rev> in --systems)")
    p.add_argument("--long-streams", type=int,
                   help="concurrent streams of the long-stream phase (default 400; --quick 40; 0 skips it)")
    p.add_argument("--paced-streams", type=int,
                   help="concurrent streams of the paced long-stream phase, few enough that every event is "
                        "relayed on time (default 200; --quick 20; --lean 0; 0 skips it)")
    p.add_argument("--long-chunks", type=int, default=200, help="tokens of each long stream, 10 ms apart (default 200)")
    p.add_argument("--capacity", action=argparse.BooleanOptionalAction, default=True,
                   help="search each system's stream capacity (default: yes)")
    p.add_argument("--capacity-budget", type=float, help="seconds the capacity search may take per system "
                                                         "(default 150; --quick 20)")
    p.add_argument("--capacity-max", type=int, default=4000, help="most streams the capacity search tries")
    p.add_argument("--capacity-start", type=int, help="first concurrency the search tries (default 50; --quick 25)")
    p.add_argument("--capacity-window", type=float,
                   help="seconds each capacity probe measures, once all its streams are open (default 3; --quick 1)")
    p.add_argument("--no-install", action="store_true", help="never apt-get/pip install wrk, nginx or LiteLLM")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--upstream-on", choices=("systems", "generators"), default="systems",
                   help="the CPUs of the fake upstream: the systems' (default; the system takes turns with it "
                        "on one core) or the load generators'")
    p.add_argument("--micro", action=argparse.BooleanOptionalAction, default=None,
                   help="run the micro-benchmarks too (default: yes, except with --quick)")
    p.add_argument("--profile", action="store_true", help="py-spy the gateway worker under load (GIL-holding samples, the upstream moved off its CPU)")
    p.add_argument("--conformance", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the conformance recordings through the gateway at the end (default: yes, except "
                        "with --quick; needs the test extra)")
    p.add_argument("--responses", action=argparse.BooleanOptionalAction, default=True,
                   help="also load the gateway through the Responses API (default: yes)")
    p.add_argument("--messages", action=argparse.BooleanOptionalAction, default=True,
                   help="also load the gateway through the Messages API (default: yes)")
    p.add_argument("--lean", action="store_true",
                   help="per system only the throughput and long-stream phases (the transport bake-off, bench/bakeoff.py)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds at the end: the gateway and the bare proxy (and their 2-worker runs) "
                        "measured again in alternating order; the targets between them read from the medians "
                        "(default 5; --quick and --lean 0; 0 skips them)")
    p.add_argument("--round-seconds", type=int, default=6, help="seconds of each phase of an interleaved round")
    p.add_argument("--nice", type=int, default=None,
                   help="niceness of every bench process (default -5 as root, else 0): on a shared "
                        "machine, other work then disturbs the measurements less")
    args = p.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (1.0 if args.quick else 10.0)
    args.latency_duration = max(1.0, args.duration / 2) if not args.quick else min(args.duration, 0.5)
    args.warmup = 0.5 if args.quick else 2.0
    args.streams = args.streams or (20 if args.quick else 1000)
    args.hold_chunks, args.hold_delay = (40, 0.5) if args.quick else (120, 1.0)
    args.open_timeout = 30 if args.quick else 100
    args.long_streams = args.long_streams if args.long_streams is not None else (40 if args.quick else 400)
    args.paced_streams = args.paced_streams if args.paced_streams is not None else (
        0 if args.lean else 20 if args.quick else 200)
    args.long_delay = 0.01
    args.capacity_budget = args.capacity_budget if args.capacity_budget is not None else (20.0 if args.quick else 150.0)
    args.capacity_start = args.capacity_start or (25 if args.quick else 50)
    args.capacity_window = args.capacity_window or (1.0 if args.quick else 3.0)
    args.capacity_settle, args.capacity_open_timeout = (0.5, 10.0) if args.quick else (1.0, 20.0)
    if args.systems:
        args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = [s for s in args.systems if s not in ALL_SYSTEMS and not variants.is_gateway(s) and not bakeoff.parse(s)]
        if unknown:
            p.error(f"unknown system(s) {', '.join(unknown)}: choose from {', '.join(ALL_SYSTEMS)} or gateway@<rev>")
    else:
        args.systems = [s for s in ALL_SYSTEMS if s != "litellm" or args.with_litellm]
    if args.with_litellm and "litellm" not in args.systems:
        args.systems.append("litellm")
    if args.clients is None:
        args.clients = [] if args.quick else list(OTHER_CLIENTS)
    elif args.clients == "none":
        args.clients = []
    else:
        args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if args.rounds is None:
        args.rounds = 0 if args.quick or args.lean else 5
    if args.micro is None:
        args.micro = not args.quick
    if args.conformance is None:
        args.conformance = not args.quick
    if args.nice is None:
        args.nice = -5 if hasattr(os, "geteuid") and os.geteuid() == 0 and not args.quick else 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    procs.NICE = args.nice
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    bench.stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        result = bench.run()
    finally:
        shutil.rmtree(bench.work, ignore_errors=True) if not os.environ.get("BENCH_KEEP_WORK") else None
    paths = report.write(result, args.out, bench.stamp)
    print(paths["md"].read_text())
    for kind, path in paths.items():
        log(f"wrote {kind}: {path}")
    print("\n".join(["", "Targets of this run:", "", *report.targets_markdown(result)]))
    return 0 if result["systems"] else 1


if __name__ == "__main__":
    sys.exit(main())
