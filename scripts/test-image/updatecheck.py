#!/usr/bin/env python3
"""QEMU proof of the A/B updates (issue 15), run by scripts/test-image.sh after vmcheck.py on the
same disk.

The Raspberry Pi firmware is played by `Firmware` below: QEMU runs with -no-reboot, so every guest
reboot or reset ends the QEMU process; the harness then does what the Pi's bootloader does: reads
autoboot.txt on p1 (mtools), takes the [tryboot] boot partition if the one-shot tryboot flag was
set during the previous run and that run was not ended by a power cut (the real flag lives in the
firmware's RAM), else [all]'s, reads that partition's config.txt ([all], [boot_partition=N],
[tryboot] sections; kernel=, initramfs, cmdline=) and starts QEMU again with that kernel, initramfs
and command line on the same disk. The guest sets the flag by writing `tryboot` to the virtio port
org.relaybox.firmware (relaybox does that only with relaybox.test_firmware=1 on the command line;
on a Pi it writes /sys/kernel/relaybox_tryboot/arm).

Bundles reach the VM on a second, read-only virtio disk (/dev/vdb: the bundles one after the
other); the test control channel copies one to /data/update/incoming and runs `relaybox update`
as an operator would on the console.

Scenarios (each ends with the relay answering and the mail sent before the first update there):
  tampered   a bundle with one byte flipped is refused, nothing written to the inactive slot
  power-cut  N times: start installing the good bundle, system_reset at a random point of the
             install; A boots and works (slot A, nothing committed, mail there)
  rollback   a bundle whose relaybox exits 1: the firmware tries B once, B never commits, the
             tryboot watchdog reboots, A boots by itself, state "rolled_back", nothing lost
  update     the good bundle (a newer version): B boots, commits (autoboot.txt names p3), the
             mail from before is there
Results: <artifacts>/update-results.txt (`update: ok`, `rollback: ok`, `power-cut: ok N/N`,
`tampered: refused` and timings) and update-results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vmcheck  # noqa: E402
from vmcheck import VMRelay, create_account, imap_greeting, markers_in, marked, mh, say, wait_for  # noqa: E402

results: dict = {}
lines: list[str] = []


class RunVM(vmcheck.VM):
    """vmcheck's VM for one QEMU run of ours: alive while that process has not ended (a child
    that ended is a zombie until waited for, which vmcheck's kill(pid, 0) takes for alive)."""

    def __init__(self, ns, proc: subprocess.Popen):
        super().__init__(ns)
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.poll() is None


def part_offsets(disk: Path) -> dict[int, int]:
    pt = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True, check=True).stdout)
    return {int(re.search(r"(\d+)$", p["node"]).group(1)): p["start"] * 512 for p in pt["partitiontable"]["partitions"]}


def ini_sections(text: str):
    """(section, key, value) of a Pi firmware config file; `initramfs X` is key initramfs."""
    section = "all"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if line.startswith("initramfs "):
            yield section, "initramfs", line.split()[1]
        elif "=" in line:
            k, _, v = line.partition("=")
            yield section, k, v


class Firmware:
    """The Pi bootloader's part: pick a boot partition, read its config.txt, start QEMU."""

    def __init__(self, args, disk: Path, bundles: Path):
        self.args = args
        self.disk = disk
        self.bundles = bundles
        self.art = args.artifacts
        self.work = Path(args.work)
        self.offsets = part_offsets(disk)
        self.tryboot = False  # the one-shot flag, in the firmware's RAM
        self.run = 0
        self.proc: subprocess.Popen | None = None
        self.cut = False
        self.boot_partition = None

    def mtype(self, part: int, name: str) -> str | None:
        r = subprocess.run(["mtype", "-i", f"{self.disk}@@{self.offsets[part]}", f"::{name}"],
                           capture_output=True)
        return r.stdout.decode(errors="replace") if r.returncode == 0 else None

    def autoboot(self) -> dict:
        text = self.mtype(1, "autoboot.txt") or ""
        conf = {}
        for sec, k, v in ini_sections(text):
            conf[(sec, k)] = v
        return conf

    def committed(self) -> int:
        return int(self.autoboot().get(("all", "boot_partition"), "0"))

    def start(self, extra: str, what: str) -> None:
        assert self.proc is None
        self.run += 1
        auto = self.autoboot()
        tryboot = self.tryboot and auto.get(("all", "tryboot_a_b")) == "1"
        self.tryboot = False  # consumed: a crash or reset from here on returns to [all]
        part = int(auto.get(("tryboot" if tryboot else "all", "boot_partition"), "0"))
        assert part in (2, 3), f"autoboot.txt names no boot partition: {auto}"
        self.boot_partition = part
        config = self.mtype(part, "config.txt")
        assert config, f"no config.txt on boot partition {part}"
        files = {"kernel": "kernel8.img", "cmdline": "cmdline.txt"}
        for sec, k, v in ini_sections(config):
            active = (sec == "all" or sec == f"boot_partition={part}" or (sec == "tryboot" and tryboot))
            if active and k in ("kernel", "initramfs", "cmdline"):
                files[k] = v
        run_dir = self.work / f"run{self.run}"
        run_dir.mkdir()
        for k in ("kernel", "initramfs", "cmdline"):
            assert k in files, f"config.txt on p{part} names no {k}"
            subprocess.run(["mcopy", "-n", "-i", f"{self.disk}@@{self.offsets[part]}", f"::{files[k]}",
                            str(run_dir / k)], check=True, capture_output=True)
        cmdline = (run_dir / "cmdline").read_text().split()
        keep = [a for a in cmdline if not re.match(r"^(console=.*|quiet|cma=.*)$", a)]
        append = " ".join(keep + [
            "console=ttyAMA0", "panic=-1", "systemd.wants=relaybox-testctl.service",
            "systemd.mask=systemd-time-wait-sync.service", "relaybox.test_firmware=1"] + extra.split())
        self.fw_log = run_dir / "firmware-port.log"
        self.serial = self.art / f"serial-update-run{self.run}.log"
        mode = "tryboot" if tryboot else "normal"
        say(f"firmware: run {self.run} ({what}): {mode} boot of p{part} ({files['cmdline']}: "
            f"{next((a for a in keep if a.startswith('root=')), '?')})")
        with open(self.art / "update-boots.txt", "a") as f:
            f.write(f"run {self.run} {what}: {mode} boot of p{part}; append: {append}\n")
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{self.args.offset + p}-:{p}" for p in vmcheck.PORTS.values())
        for sock in ("monitor.sock", "testctl.sock"):
            (self.work / sock).unlink(missing_ok=True)
        # cache=unsafe: QEMU ignores the guest's flushes (a host fdatasync of the multi-GB disk
        # file each, which made an install crawl on a loaded host). The power cuts end the QEMU
        # process, not the host, so what the guest had written still reaches the file and what it
        # had not is lost, as on a card: the same semantics as cache=writeback for this test.
        cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "max,pauth-impdef=on", "-m", "1024", "-smp", "2",
            "-display", "none", "-no-user-config", "-no-reboot",
            "-kernel", str(run_dir / "kernel"), "-initrd", str(run_dir / "initramfs"), "-append", append,
            "-drive", f"if=none,id=disk0,file={self.disk},format=raw,cache=unsafe",
            "-device", "virtio-blk-pci,drive=disk0",
            "-drive", f"if=none,id=disk1,file={self.bundles},format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=disk1",
            "-netdev", f"user,id=n0{fwd}", "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-device", "virtio-rng-pci", "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ctl,path={self.work / 'testctl.sock'},server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=org.relaybox.testctl",
            "-chardev", f"file,id=fw,path={self.fw_log}",
            "-device", "virtserialport,chardev=fw,name=org.relaybox.firmware",
            "-monitor", f"unix:{self.work / 'monitor.sock'},server=on,wait=off",
            "-serial", f"file:{self.serial}",
        ]
        self.qemu_log = open(self.art / f"qemu-update-run{self.run}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.qemu_log, stderr=subprocess.STDOUT)
        self.cut = False
        self.t_start = time.monotonic()
        ns = argparse.Namespace(monitor=str(self.work / "monitor.sock"), ctl=str(self.work / "testctl.sock"),
                                qemu_pid=self.proc.pid)
        self.vm = RunVM(ns, self.proc)
        wait_for("the QEMU monitor socket", lambda: (self.work / "monitor.sock").exists(), 30, self.vm, every=0.2)

    def power_cut(self) -> None:
        """system_reset: with -no-reboot QEMU ends; the tryboot flag (firmware RAM) is lost."""
        self.cut = True
        try:
            self.vm.monitor("system_reset")
        except OSError:
            pass
        self.wait_exit(30, kill=True)

    def wait_exit(self, timeout: float, kill: bool = False) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if not kill:
                raise AssertionError(f"QEMU run {self.run} did not end within {timeout:.0f}s")
            self.proc.kill()
            self.proc.wait(10)
        self.qemu_log.close()
        flag = self.fw_log.exists() and "tryboot" in self.fw_log.read_text(errors="replace").split()
        # a power cut loses the flag, like the firmware's RAM
        self.tryboot = flag and not self.cut
        say(f"firmware: run {self.run} ended after {time.monotonic() - self.t_start:.0f}s"
            f"{' (power cut)' if self.cut else ''}; tryboot flag {'set' if self.tryboot else 'not set'}")
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.qemu_log.close()
            self.proc = None


def status(fw: Firmware, timeout: float = 30) -> dict:
    return fw.vm.status(timeout)


def boot_and_probe(fw: Firmware, relay: VMRelay, extra: str, what: str, want_partition: int) -> dict:
    """Start the next QEMU run and wait until the relay answers; check the slot that runs."""
    fw.start(extra, what)
    assert fw.boot_partition == want_partition, f"{what}: the firmware chose p{fw.boot_partition}, not p{want_partition}"
    t0 = time.monotonic()
    st = wait_for(f"{what}: the control channel", lambda: status(fw), 600, fw.vm, every=2)
    wait_for(f"{what}: the IMAP greeting", lambda: imap_greeting(relay), 600, fw.vm)
    st = status(fw)
    say(f"{what}: up {time.monotonic() - t0:.0f}s after QEMU started; root {st.get('cmdline_root')}; "
        f"autoboot: {st.get('autoboot')}")
    return st


def slot_of(st: dict) -> str:
    return {"PARTUUID=52424f58-05": "A", "PARTUUID=52424f58-06": "B"}.get(st.get("cmdline_root", ""), "?")


def state(st: dict) -> dict:
    try:
        return json.loads(st.get("update_state") or "{}")
    except ValueError:
        return {}


def fetch(fw: Firmware, name: str, off: int, size: int) -> None:
    out = fw.vm.ctl(f"fetch {name} {off} {size}", timeout=300)
    assert out.strip() == f"fetched {size}", f"fetch {name}: {out!r}"


def update_log(fw: Firmware) -> str:
    return fw.vm.ctl("update-log", timeout=20)


def run_update(fw: Firmware, name: str, args: str = "", timeout: float = 1200) -> tuple[int | None, str, float]:
    """relaybox update; returns (exit code or None when the VM rebooted, log, seconds)."""
    t0 = time.monotonic()
    assert fw.vm.ctl(f"update {name} {args}".strip(), timeout=20).strip() == "started"
    log = ""
    while time.monotonic() - t0 < timeout:
        if fw.proc.poll() is not None:
            return None, log, time.monotonic() - t0
        try:
            log = update_log(fw)
        except (OSError, TimeoutError):
            time.sleep(1)
            continue
        m = re.search(r"^exit: (\d+)$", log, re.M)
        if m and m.group(1) == "0" and re.search(r"^update: rebooting$", log, re.M):
            # the reboot is queued: QEMU ends once the guest has shut down
            try:
                fw.proc.wait(300)
            except subprocess.TimeoutExpired:
                raise AssertionError("relaybox update said it reboots, but the VM did not reboot in 300 s")
            return None, log, time.monotonic() - t0
        if m:
            return int(m.group(1)), log, time.monotonic() - t0
        time.sleep(1)
    raise AssertionError(f"relaybox update {name} did not finish within {timeout:.0f}s: {log[-500:]}")


# The install's steps in order (relaybox update's progress lines `update: <step> <n>%`); a cut
# point is a position on this scale: 100 per step, then 100 for "written, flag set, not rebooted".
STEPS = ["verifying boot", "verifying root", "writing boot", "writing root", "checking boot", "checking root"]


def install_position(log: str) -> int:
    pos = 0
    for m in re.finditer(r"^update: (\w+ \w+) (\d+)%$", log, re.M):
        if m.group(1) in STEPS:
            pos = max(pos, STEPS.index(m.group(1)) * 100 + int(m.group(2)))
    if re.search(r"^exit: 0$", log, re.M):
        pos = len(STEPS) * 100
    return pos


def check_works(fw: Firmware, relay: VMRelay, st: dict, slot: str, committed: int, mail: dict, what: str) -> None:
    assert slot_of(st) == slot, f"{what}: running {st.get('cmdline_root')}, not slot {slot}"
    in_vm = st.get("autoboot", "").split("[tryboot]")[0].split()
    assert fw.committed() == committed and f"boot_partition={committed}" in in_vm, (
        f"{what}: committed slot is not p{committed}: {st.get('autoboot')}")
    assert st.get("relaybox") == "active", f"{what}: relaybox.service is {st.get('relaybox')}"
    for (addr, pw), want in mail.items():
        have = markers_in(relay, addr, pw)
        assert want <= have, f"{what}: mail lost for {addr}: missing {want - have}"


def bundle_disk(work: Path, bundles: dict[str, Path]) -> tuple[Path, dict[str, tuple[int, int]]]:
    """One read-only disk with the bundles at 1 MiB boundaries; {name: (offset, size)}."""
    disk = work / "bundles.img"
    where = {}
    off = 0
    with open(disk, "wb") as out:
        for name, path in bundles.items():
            out.seek(off)
            size = 0
            with open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    size += len(chunk)
            where[name] = (off, size)
            off += (size + (1 << 20) - 1) // (1 << 20) * (1 << 20)
        out.truncate(off + (1 << 20))
    return disk, where


def tamper(src: Path, dst: Path) -> None:
    """Flip one byte of the root image payload, near its end (after the signed manifest)."""
    data = bytearray(src.read_bytes())
    data[len(data) - 4096] ^= 0x55
    dst.write_bytes(bytes(data))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--disk", type=Path, required=True)
    ap.add_argument("--good", type=Path, required=True, help="a newer, working bundle")
    ap.add_argument("--broken", type=Path, required=True, help="a newer bundle whose relaybox fails")
    ap.add_argument("--good-version", required=True)
    ap.add_argument("--offset", type=int, required=True)
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--power-cuts", type=int, default=5)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    results["seed"] = seed
    art = args.artifacts
    relay = VMRelay(args.offset, art / "serial-update.log")
    work = Path(args.work)
    tampered = work / "tampered.update"
    tamper(args.good, tampered)
    bdisk, where = bundle_disk(work, {"good.update": args.good, "tampered.update": tampered,
                                      "broken.update": args.broken})
    tampered.unlink()
    fw = Firmware(args, args.disk, bdisk)
    ok = False
    t_all = time.monotonic()
    try:
        # --- slot A, as flashed: the update machinery is in place -----------------------------
        st = boot_and_probe(fw, relay, "", "first boot of A", 2)
        (art / "status-update-A.txt").write_text(json.dumps(st, indent=1))
        assert slot_of(st) == "A", st.get("cmdline_root")
        assert st.get("tryboot_module") == "loaded", "the relaybox_tryboot module is not loaded"
        assert st.get("firmware_mount", "").split()[1:2] == ["vfat"], f"p1 mount: {st.get('firmware_mount')}"
        assert st.get("update_path") == "active", f"relaybox-update.path is {st.get('update_path')}"
        assert re.fullmatch(r"[0-9a-f]{64}", st.get("update_key", "")), "no update key in the image"
        alice = create_account(relay, fw.vm)
        bob = create_account(relay, fw.vm)
        raw = mh.build_message(alice[0], bob[0], body=marked("before-update"), subject="before-update")
        code, text = mh.send_raw(relay, alice[0], alice[1], bob[0], raw)
        assert code == 250, f"DATA -> {code} {text!r}"
        mail = {bob: {"before-update"}}

        # --- tampered: refused before anything is written -------------------------------------
        before = fw.vm.ctl("partsum", timeout=120)
        fetch(fw, "tampered.update", *where["tampered.update"])
        rc, log, took = run_update(fw, "tampered.update", "--no-reboot", timeout=900)
        (art / "update-tampered.log").write_text(log)
        assert rc not in (None, 0), f"the tampered bundle was accepted (exit {rc}): {log[-500:]}"
        after = fw.vm.ctl("partsum", timeout=120)
        assert before == after, f"the tampered bundle changed a partition:\n{before}\n{after}"
        msgs = [ln for ln in log.strip().splitlines() if not ln.startswith("exit: ")]
        results["tampered_message"] = msgs[-1] if msgs else ""
        results["tampered_check_s"] = round(took, 1)
        lines.append("tampered: refused")
        say(f"tampered: refused in {took:.0f}s ({results['tampered_message']})")

        # --- power cuts during the install -----------------------------------------------------
        fetch(fw, "good.update", *where["good.update"])
        # the cut points: random positions of the install's progress (verify, write, read back
        # each image; then done with the flag set but not rebooted), one in each of n equal strata
        n = args.power_cuts
        scale = (len(STEPS) + 1) * 100
        cuts_ok = 0
        for i in range(n):
            target = int(rng.uniform(i / n, (i + 1) / n) * scale)
            fetch(fw, "good.update", *where["good.update"])  # a no-op when it is still there
            assert fw.vm.ctl("update good.update --no-reboot", timeout=20).strip() == "started"
            t0 = time.monotonic()
            progress: list[str] = []
            while time.monotonic() - t0 < 900 and fw.proc.poll() is None:
                try:
                    text = update_log(fw)
                except (OSError, TimeoutError):
                    continue
                progress = text.strip().splitlines()
                done = install_position(text)
                if done >= target or re.search(r"^exit: ", text, re.M):
                    break
            if target > len(STEPS) * 100:  # after the install: wait a random part of a few seconds
                time.sleep(rng.uniform(0, 5))
            at = time.monotonic() - t0
            last = progress[-1] if progress else "(no output yet)"
            failed = [ln for ln in progress if ln.startswith("exit: ") and ln != "exit: 0"]
            assert not failed, f"the install failed by itself before the cut: {progress[-5:]}"
            say(f"power cut {i + 1}/{n} at position {target}/{scale}, {at:.1f}s into the install (last line: {last})")
            fw.power_cut()
            st = boot_and_probe(fw, relay, "", f"boot of A after power cut {i + 1}", 2)
            check_works(fw, relay, st, "A", 2, mail, f"after power cut {i + 1}")
            results.setdefault("power_cuts", []).append({"target": target, "at_s": round(at, 1), "last_line": last,
                                                         "phase_after": state(st).get("phase")})
            cuts_ok += 1
        lines.append(f"power-cut: ok {cuts_ok}/{n}")

        # --- rollback: B's relaybox never becomes healthy --------------------------------------
        fetch(fw, "broken.update", *where["broken.update"])
        rc, log, took = run_update(fw, "broken.update", "", timeout=1200)
        (art / "update-broken.log").write_text(log)
        assert rc is None, f"relaybox update of the broken bundle ended with {rc}, no reboot: {log[-500:]}"
        fw.wait_exit(120, kill=False)
        assert fw.tryboot, "the install rebooted without setting the tryboot flag"
        t_rb = time.monotonic()
        fw.start("relaybox.tryboot_timeout=60", "tryboot of the broken B")
        assert fw.boot_partition == 3, f"the firmware chose p{fw.boot_partition}, not p3"
        try:
            st = wait_for("broken B: the control channel", lambda: status(fw), 600, fw.vm, every=2)
            (art / "status-update-broken-B.txt").write_text(json.dumps(st, indent=1))
            assert slot_of(st) == "B", st.get("cmdline_root")
            say(f"broken B runs (relaybox {st.get('relaybox')}); the watchdog: {st.get('tryboot_watchdog')}")
        except (AssertionError, OSError, TimeoutError, ValueError) as e:
            if fw.proc.poll() is None:
                raise
            say(f"broken B ended before the control channel answered ({e})")
        if fw.proc is not None:
            fw.wait_exit(900)
        assert not fw.tryboot
        st = boot_and_probe(fw, relay, "", "A after the failed try", 2)
        results["rollback_s"] = round(time.monotonic() - t_rb, 1)
        check_works(fw, relay, st, "A", 2, mail, "after the rollback")
        phase = state(st).get("phase")
        (art / "status-update-rolled-back.txt").write_text(json.dumps(st, indent=1))
        assert phase == "rolled_back", f"update state after the rollback: {st.get('update_state')}"
        lines.append("rollback: ok")
        say(f"rollback: A runs again, state {phase}, mail there ({results['rollback_s']}s from the try to A up)")

        # --- update: the good bundle, B boots and commits --------------------------------------
        rc, log, took = run_update(fw, "good.update", "", timeout=1200)
        (art / "update-good.log").write_text(log)
        assert rc is None, f"relaybox update ended with {rc} instead of rebooting: {log[-500:]}"
        t_boot = time.monotonic()
        fw.wait_exit(120, kill=False)
        results["install_s"] = round(took, 1)
        assert fw.tryboot, "the install rebooted without setting the tryboot flag"
        st = boot_and_probe(fw, relay, "relaybox.tryboot_timeout=900", "tryboot of the new B", 3)
        assert slot_of(st) == "B"

        def committed():
            s = status(fw)
            return "boot_partition=3" in s.get("autoboot", "").split("[tryboot]")[0] and state(s).get("phase") == "committed" and s

        st = wait_for("B commits itself", committed, 600, fw.vm, every=3)
        results["reboot_to_commit_s"] = round(time.monotonic() - t_boot, 1)
        (art / "status-update-B.txt").write_text(json.dumps(st, indent=1))
        assert st.get("os_version_id") == args.good_version, f"B runs {st.get('os_version_id')}"
        check_works(fw, relay, st, "B", 3, mail, "after the update")
        assert fw.committed() == 3
        results["update_total_s"] = round(results["install_s"] + results["reboot_to_commit_s"], 1)
        lines.append("update: ok")
        say(f"update: B ({args.good_version}) committed; install {results['install_s']}s, "
            f"reboot to commit {results['reboot_to_commit_s']}s; mail there")
        ok = True
    except Exception as e:  # noqa: BLE001
        results["error"] = f"{type(e).__name__}: {e}"
        print(f"FAILED: {results['error']}", file=sys.stderr)
        if fw.proc is not None:
            for cmd in ("journal", "units"):
                try:
                    (art / f"vm-update-{cmd}.txt").write_text(fw.vm.ctl(cmd, timeout=30))
                except Exception as e2:  # noqa: BLE001
                    (art / f"vm-update-{cmd}.txt").write_text(f"could not read: {e2}\n")
    finally:
        fw.stop()
        results["boots"] = fw.run
        results["update_tests_s"] = round(time.monotonic() - t_all, 1)
        (art / "update-results.json").write_text(json.dumps(results, indent=1))
        out = lines + [f"update_{k}: {v}" for k, v in results.items()]
        (art / "update-results.txt").write_text("\n".join(out) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
