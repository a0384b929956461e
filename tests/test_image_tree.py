"""Checks of the appliance image: the tree (image/, buildroot-overlay/) and the built image.

The tree, without Buildroot: every file a defconfig names exists, the overlay path, the read-only
compressed root, the cargo-package fields, the partition layout agreeing between the genimage
config, cmdline.txt, the first-boot scripts and fstab, the hardening of relaybox.service, the
Raspberry Pi Imager reader, and that nothing secret is in the tree.

The built image (build/relaybox-<version>-rpi-arm64.img from scripts/build-image.sh, the file CI
builds and scripts/test-image.sh boots): its partition table, the boot files for the Pi 4 and the
Pi 5, the Raspberry Pi Imager JSON, and that no private key or password hash is anywhere in it.
Those tests skip when no built image is there, unless RELAYBOX_IMAGE_REQUIRED=1 (the image stage
of scripts/test.sh runs them that way after building and booting it).
"""

import configparser
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "image"
OVERLAY = REPO / "buildroot-overlay"
UNITS = OVERLAY / "usr/lib/systemd/system"
LIBEXEC = OVERLAY / "usr/libexec/relaybox"
DEFCONFIGS = sorted((IMAGE / "configs").glob("*_defconfig"))
EXT_VAR = "$(BR2_EXTERNAL_RELAYBOX_PATH)"

# Paths inside the upstream Buildroot tree that the defconfigs may name (they exist in the pinned
# release, checked when the defconfigs were written; they cannot be checked without Buildroot).
UPSTREAM_PATHS = {
    "board/raspberrypi/patches",
    "board/raspberrypi/linux-4k-page-size.fragment",
}


def parse_defconfig(path):
    """{symbol: value} with 'n' for '# X is not set'; string values unquoted."""
    values = {}
    for line in path.read_text().splitlines():
        m = re.match(r"# (BR2_\w+) is not set$", line)
        if m:
            values[m.group(1)] = "n"
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"(BR2_\w+)=(.*)$", line)
        assert m, f"{path.name}: unparsable line {line!r}"
        value = m.group(2)
        if value.startswith('"'):
            assert value.endswith('"'), f"{path.name}: unterminated string {line!r}"
            value = value[1:-1]
        assert m.group(1) not in values, f"{path.name}: {m.group(1)} set twice"
        values[m.group(1)] = value
    return values


def ext_path(value):
    assert value.startswith(EXT_VAR + "/"), value
    return (IMAGE / value[len(EXT_VAR) + 1 :]).resolve()


def parse_unit(path):
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # keys are case-sensitive
    cp.read_string(path.read_text(), source=str(path))
    return cp


def shell_var(path, name):
    m = re.search(rf"^{name}=(\S+)$", path.read_text(), re.M)
    assert m, f"{name}= not found in {path}"
    return m.group(1)


def genimage():
    """Parsed board/common/genimage.cfg.in: {image name: body} and the sdcard partitions in order."""
    text = (IMAGE / "board/common/genimage.cfg.in").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    images = {}
    for m in re.finditer(r"^image\s+(\S+)\s*\{", text, re.M):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        images[m.group(1)] = text[m.end() : i - 1]
    sd = images["sdcard.img"]
    parts = []
    for m in re.finditer(r"partition\s+(\S+)\s*\{([^}]*)\}", sd):
        attrs = dict(re.findall(r'([\w-]+)\s*=\s*"?([^"\n]*?)"?\s*$', m.group(2), re.M))
        parts.append((m.group(1), attrs))
    return images, parts


def partition_numbers(names):
    """MBR numbering as genimage makes it: 1-3 primary, 4 the extended one, then 5, 6, ..."""
    return {n: i + 1 if i < 3 else i + 2 for i, n in enumerate(names)}


def fs_label(image_body):
    m = re.search(r'label\s*=\s*"([^"]+)"', image_body)
    return m and m.group(1)


# --- the BR2_EXTERNAL tree ---------------------------------------------------------------------


def test_external_tree_shape():
    desc = (IMAGE / "external.desc").read_text()
    assert re.search(r"^name: RELAYBOX$", desc, re.M)
    assert "package/*/*.mk" in (IMAGE / "external.mk").read_text()
    sourced = re.findall(r'^source "\$BR2_EXTERNAL_RELAYBOX_PATH/(\S+)"', (IMAGE / "Config.in").read_text(), re.M)
    assert sourced, "Config.in sources no package"
    for rel in sourced:
        assert (IMAGE / rel).is_file(), rel
    for pkg in (IMAGE / "package").iterdir():
        assert f"package/{pkg.name}/Config.in" in sourced, f"{pkg.name} not sourced by Config.in"
    assert [p.name for p in DEFCONFIGS] == ["relaybox_rpi4_64_defconfig", "relaybox_rpi5_defconfig"]


@pytest.mark.parametrize("defconfig", DEFCONFIGS, ids=lambda p: p.name)
def test_defconfig_named_files_exist(defconfig):
    cfg = parse_defconfig(defconfig)
    named = 0
    for sym, value in cfg.items():
        if sym in ("BR2_LINUX_KERNEL_CUSTOM_TARBALL_LOCATION", "BR2_LINUX_KERNEL_INTREE_DTS_NAME"):
            continue
        for word in value.split():
            if word.startswith(EXT_VAR):
                assert ext_path(word).exists(), f"{sym}: {word} does not exist"
                named += 1
            elif "/" in word:
                assert word in UPSTREAM_PATHS, f"{sym}: {word} is neither in image/ nor a known upstream path"
    assert named >= 5
    for sym in ("BR2_ROOTFS_POST_BUILD_SCRIPT", "BR2_ROOTFS_POST_IMAGE_SCRIPT"):
        script = ext_path(cfg[sym])
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.parametrize("defconfig", DEFCONFIGS, ids=lambda p: p.name)
def test_defconfig_overlay_path(defconfig):
    cfg = parse_defconfig(defconfig)
    overlays = cfg["BR2_ROOTFS_OVERLAY"].split()
    assert [ext_path(o) for o in overlays] == [OVERLAY.resolve()]


@pytest.mark.parametrize("defconfig", DEFCONFIGS, ids=lambda p: p.name)
def test_defconfig_system(defconfig):
    cfg = parse_defconfig(defconfig)
    # read-only root: never remounted rw, compressed read-only filesystem, no ext4 root image
    assert cfg.get("BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW") == "n"
    erofs = cfg.get("BR2_TARGET_ROOTFS_EROFS") == "y" and (
        cfg.get("BR2_TARGET_ROOTFS_EROFS_LZ4HC") == "y" or cfg.get("BR2_TARGET_ROOTFS_EROFS_LZMA") == "y"
    )
    squashfs = cfg.get("BR2_TARGET_ROOTFS_SQUASHFS") == "y"
    assert erofs or squashfs, "no read-only compressed rootfs selected"
    assert cfg.get("BR2_TARGET_ROOTFS_EXT2", "n") == "n"
    # systemd on glibc
    assert cfg.get("BR2_INIT_SYSTEMD") == "y"
    assert "GLIBC" in "".join(s for s, v in cfg.items() if s.startswith("BR2_TOOLCHAIN_") and v == "y")
    assert cfg.get("BR2_INIT_SYSTEMD_VAR_FACTORY") == "y", "/var must be a tmpfs"
    # no login, no password
    assert cfg.get("BR2_TARGET_ENABLE_ROOT_LOGIN") == "n"
    assert "BR2_TARGET_GENERIC_ROOT_PASSWD" not in cfg
    assert cfg.get("BR2_TARGET_GENERIC_GETTY") == "n"
    assert cfg.get("BR2_TARGET_GENERIC_HOSTNAME") == "relaybox"
    for sym in (
        "BR2_PACKAGE_RELAYBOX",
        "BR2_PACKAGE_CA_CERTIFICATES",
        "BR2_PACKAGE_SYSTEMD_NETWORKD",
        "BR2_PACKAGE_SYSTEMD_RESOLVED",
        "BR2_PACKAGE_SYSTEMD_TIMESYNCD",
        "BR2_PACKAGE_E2FSPROGS_RESIZE2FS",
        "BR2_PACKAGE_UTIL_LINUX_BINARIES",  # sfdisk, blkid, findmnt
        "BR2_PACKAGE_UTIL_LINUX_PARTX",
        "BR2_PACKAGE_HOST_GENIMAGE",
        "BR2_PACKAGE_HOST_E2FSPROGS",  # data.ext4
        "BR2_PACKAGE_HOST_DOSFSTOOLS",
        "BR2_PACKAGE_HOST_MTOOLS",
        "BR2_DOWNLOAD_FORCE_CHECK_HASHES",
    ):
        assert cfg.get(sym) == "y", f"{sym} not enabled"
    fragments = cfg["BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES"].split()
    ours = [ext_path(f) for f in fragments if f.startswith(EXT_VAR)]
    assert ours, "no relaybox kernel fragment"
    frag = "\n".join(p.read_text() for p in ours)
    assert "CONFIG_EROFS_FS=y" in frag and "CONFIG_EROFS_FS_ZIP=y" in frag, "EROFS root must be built in"
    assert "# CONFIG_SWAP is not set" in frag


def test_cmdline_matches_genimage():
    images, parts = genimage()
    sig = re.search(r"disk-signature\s*=\s*0x([0-9a-fA-F]{8})", images["sdcard.img"]).group(1).lower()
    root_index = partition_numbers([name for name, _ in parts])["rootfs-a"]
    for board in ("rpi4", "rpi5"):
        cmdline = (IMAGE / "board" / board / "cmdline.txt").read_text()
        assert cmdline.count("\n") == 1 and cmdline.endswith("\n"), "cmdline.txt must be one line"
        args = dict(a.split("=", 1) if "=" in a else (a, "") for a in cmdline.split())
        assert args["root"] == f"PARTUUID={sig}-{root_index:02d}"
        assert args["rootfstype"] == "erofs"
        assert "ro" in args and "rootwait" in args
        assert "tty1" in cmdline


# --- the relaybox package ----------------------------------------------------------------------


def test_package_cargo_fields():
    pkg = IMAGE / "package/relaybox"
    mk = (pkg / "relaybox.mk").read_text()
    fields = dict(re.findall(r"^(RELAYBOX_\w+)\s*=\s*(.*)$", mk, re.M))
    for key in ("RELAYBOX_VERSION", "RELAYBOX_SITE", "RELAYBOX_SOURCE", "RELAYBOX_LICENSE"):
        assert fields.get(key), f"{key} missing"
    assert re.search(r"^\$\(eval \$\(cargo-package\)\)\s*$", mk, re.M)
    assert "RELAYBOX_SITE_METHOD" not in fields, "local site method skips cargo vendoring"
    assert fields["RELAYBOX_SOURCE"].endswith((".tar.gz", ".tar.xz"))
    assert "RELAYBOX_OVERRIDE_SRCDIR" in mk, "development via OVERRIDE_SRCDIR must be documented"
    # the crate Buildroot builds is the one in this repository, at this version
    subdir = fields.get("RELAYBOX_SUBDIR", ".")
    cargo = (REPO / subdir / "Cargo.toml").read_text()
    assert re.search(rf'^version\s*=\s*"{re.escape(fields["RELAYBOX_VERSION"])}"', cargo, re.M)
    assert (REPO / "Cargo.lock").is_file(), "cargo-package builds with --locked"
    assert "RELAYBOX_USERS" in mk and re.search(r"^\s*relaybox -1 relaybox -1 \* ", mk, re.M), \
        "relaybox system user with login disabled"
    assert (pkg / "relaybox.hash").is_file()
    # legal-info copies the license files from the source tree: they must be there
    license_files = fields.get("RELAYBOX_LICENSE_FILES", "").split()
    assert license_files, "RELAYBOX_LICENSE_FILES missing"
    for f in license_files:
        assert (REPO / f).is_file(), f"{f} (RELAYBOX_LICENSE_FILES) is not in the source tree"
    assert "AFFERO GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()
    conf = (pkg / "Config.in").read_text()
    assert "config BR2_PACKAGE_RELAYBOX" in conf
    assert "depends on BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS" in conf
    assert "select BR2_PACKAGE_HOST_RUSTC" in conf


# --- partitions: genimage, first boot, fstab agree ---------------------------------------------


def test_partition_layout_agrees():
    images, parts = genimage()
    names = [name for name, _ in parts]
    assert names == ["config", "boot-a", "boot-b", "rootfs-a", "rootfs-b", "data"]
    num = partition_numbers(names)
    attrs = dict(parts)
    disk_sh = LIBEXEC / "disk.sh"
    data_label = shell_var(disk_sh, "DATA_LABEL")
    boot_label = shell_var(disk_sh, "BOOT_LABEL")
    assert data_label == "relaybox-data"
    assert int(shell_var(disk_sh, "DATA_PARTNO")) == num["data"] == 7
    assert int(shell_var(disk_sh, "EXT_PARTNO")) == 4
    assert int(shell_var(disk_sh, "BOOT_PARTNO")) == num["config"] == 1
    # p1 config: FAT, labelled as the first-boot scripts expect, with autoboot.txt
    cfg_img = attrs["config"]["image"]
    assert "vfat" in images[cfg_img] and fs_label(images[cfg_img]) == boot_label
    assert '"autoboot.txt"' in images[cfg_img]
    assert "boot_partition=2" in (IMAGE / "board/common/post-image.sh").read_text()
    # p2/p3 boot A/B: FAT, at least 256 MiB (Debian's kernels are 40-50 MB)
    for part in ("config", "boot-a", "boot-b"):
        assert attrs[part]["partition-type"].lower() == "0xc"
    for img in (attrs["boot-a"]["image"], attrs["boot-b"]["image"]):
        assert "vfat" in images[img] and int(re.search(r"size\s*=\s*(\d+)M", images[img]).group(1)) >= 256
    # root A/B: the EROFS image Buildroot makes, and an equal empty slot
    assert attrs["rootfs-a"]["image"] == "rootfs.erofs"
    assert attrs["rootfs-a"]["size"] == attrs["rootfs-b"]["size"]
    # data: ext4 with the label that fstab mounts
    data_img = attrs["data"]["image"]
    assert "ext4" in images[data_img] and fs_label(images[data_img]) == data_label
    fstab = [line.split() for line in (OVERLAY / "etc/fstab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    data = [f for f in fstab if f[1] == "/data"]
    assert len(data) == 1
    spec, _, fstype, options, *_ = data[0]
    assert spec == f"LABEL={data_label}" and fstype == "ext4"
    opts = options.split(",")
    assert "noatime" in opts
    commit = [o for o in opts if o.startswith("commit=")]
    assert commit and int(commit[0].split("=")[1]) >= 30, "long journal commit interval"
    assert "x-systemd.requires=relaybox-data-prepare.service" in opts
    assert (UNITS / "relaybox-data-prepare.service").is_file()
    assert not any(f[2] == "swap" for f in fstab), "no swap"
    root = [f for f in fstab if f[1] == "/"]
    assert root and "ro" in root[0][3].split(",")


def test_first_boot_writes_code_and_config_where_expected():
    fb = (LIBEXEC / "firstboot").read_text()
    assert "CODE=$DATA/setup-code" in fb and shell_var(LIBEXEC / "firstboot", "DATA") == "/data/relaybox"
    assert 'chmod 0600 "$CODE.tmp"' in fb and 'chown relaybox:relaybox "$CODE.tmp"' in fb
    assert shell_var(LIBEXEC / "firstboot", "BOOT_FILE") == "relaybox-setup-code.txt"
    # the config path relaybox.service reads is where first boot writes, through /etc/relaybox
    link = OVERLAY / "etc/relaybox"
    assert link.is_symlink()
    conf_dir = shell_var(LIBEXEC / "firstboot", "CONF_DIR")
    assert link.readlink() == Path(conf_dir)
    exec_start = parse_unit(UNITS / "relaybox.service")["Service"]["ExecStart"].split()
    conf = Path(exec_start[exec_start.index("--config") + 1])
    assert conf.parent == Path("/etc/relaybox") and "$CONF_DIR/" + conf.name in fb
    assert 'data_dir = "/data/relaybox"' in fb
    console = (LIBEXEC / "console").read_text()
    assert "/data/relaybox/setup-code" in console
    cu = parse_unit(UNITS / "relaybox-console.service")
    assert cu["Service"]["TTYPath"] == "/dev/tty1" and cu["Service"]["StandardOutput"] == "tty"


# --- units and the rest of the overlay ---------------------------------------------------------


def all_units():
    return sorted(p for p in OVERLAY.rglob("*") if p.suffix in (".service", ".mount", ".timer", ".socket")
                  and p.is_file())


@pytest.mark.parametrize("unit", all_units(), ids=lambda p: p.name)
def test_unit_parses(unit):
    cp = parse_unit(unit)
    if unit.parent.name.endswith(".d"):
        return  # drop-in
    assert cp.has_section("Unit") and cp["Unit"].get("Description")
    if unit.suffix == ".service":
        cmd = cp["Service"]["ExecStart"].split()[0].lstrip("-@:+!")
        if cmd != "/usr/bin/relaybox":  # installed by the package
            target = OVERLAY / cmd.lstrip("/")
            assert target.is_file() and target.stat().st_mode & 0o111, f"{cmd} not in the overlay or not executable"


def test_relaybox_service_hardening():
    s = parse_unit(UNITS / "relaybox.service")
    svc = s["Service"]
    expected = {
        "Type": "notify",
        "Restart": "always",
        "User": "relaybox",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/data",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
    }
    for key, value in expected.items():
        assert svc.get(key) == value, f"{key}={svc.get(key)!r}, want {value!r}"
    assert re.fullmatch(r"\d+(s|min)?", svc["WatchdogSec"])
    assert svc["ExecStart"].startswith("/usr/bin/relaybox serve --config ")
    unit = s["Unit"]
    assert "time-sync.target" in unit["After"].split() and "time-sync.target" in unit["Wants"].split()
    assert "relaybox-firstboot.service" in unit["Requires"].split()
    assert "/data" in unit["RequiresMountsFor"].split()
    assert s["Install"]["WantedBy"] == "multi-user.target"


def test_preset_enables_what_exists():
    preset = (OVERLAY / "usr/lib/systemd/system-preset/70-relaybox.preset").read_text()
    enabled = re.findall(r"^enable (\S+)$", preset, re.M)
    for name in enabled:
        if name.startswith("relaybox"):
            assert (UNITS / name).is_file(), name
    for name in ("relaybox.service", "systemd-timesyncd.service", "systemd-time-wait-sync.service",
                 "systemd-networkd.service", "systemd-resolved.service"):
        assert name in enabled, name
    assert re.search(r"^disable getty@\.service$", preset, re.M), "no login prompt on tty1"


def test_system_config():
    journald = parse_unit(OVERLAY / "etc/systemd/journald.conf.d/relaybox.conf")["Journal"]
    assert journald["Storage"] == "volatile" and journald.get("RuntimeMaxUse")
    resolved = parse_unit(OVERLAY / "etc/systemd/resolved.conf.d/relaybox.conf")["Resolve"]
    assert resolved["MulticastDNS"] == "yes"
    net = parse_unit(OVERLAY / "etc/systemd/network/20-eth0.network")
    assert net["Match"]["Name"] == "eth0" and net["Network"]["DHCP"] == "yes"
    assert net["Network"]["MulticastDNS"] == "yes"
    assert (OVERLAY / "etc/hostname").read_text().strip() == "relaybox"
    for line in (OVERLAY / "usr/lib/sysctl.d/90-relaybox.conf").read_text().splitlines():
        assert not line.strip() or line.startswith("#") or re.fullmatch(r"[\w.]+ = \S+", line), line


def test_scripts_are_valid_shell():
    scripts = [LIBEXEC / n for n in ("firstboot", "data-prepare", "console", "disk.sh", "imager-config")]
    scripts += [IMAGE / "board/common/post-build.sh"]
    for s in scripts:
        subprocess.run(["sh", "-n", str(s)], check=True)
    subprocess.run(["bash", "-n", str(IMAGE / "board/common/post-image.sh")], check=True)
    subprocess.run(["bash", "-n", str(REPO / "scripts/build-image.sh")], check=True)


def test_data_prepare_only_touches_the_root_disk():
    text = (LIBEXEC / "data-prepare").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    # every device it writes to is derived from the root's disk
    assert 'disk=$(root_disk)' in code and 'dev=/dev/$disk' in code
    for tool in ("sfdisk", "mkfs.ext4", "resize2fs", "partx"):
        for line in code.splitlines():
            if re.search(rf"\b{tool}\b", line) and "echo \"relaybox" not in line:
                assert '"$dev"' in line or '"$part"' in line, f"{tool} on something else: {line.strip()}"
    assert "die" in code and "not touching it" in code


PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# a key itself, not the marker string alone (parsers such as wpa_supplicant's carry that)
PRIVATE_KEY_BLOCK = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----\s*[A-Za-z0-9+/=\s]{64,}-----END ")
PASSWORD_HASH = re.compile(r"\$(?:1|2[aby]|5|6|7|y|gy)\$[./A-Za-z0-9]*\$?[./A-Za-z0-9]{16,}")


def test_no_secrets_or_passwords_in_tree():
    for root in (OVERLAY, IMAGE):
        for p in root.rglob("*"):
            if not p.is_file() or p.is_symlink():
                continue
            text = p.read_text(errors="replace")
            assert not PRIVATE_KEY.search(text), f"private key in {p}"
            assert not PASSWORD_HASH.search(text), f"password hash in {p}"
            assert p.suffix not in (".pem", ".key", ".crt"), f"key or certificate file {p}"
    for name in ("etc/shadow", "etc/passwd", "etc/group"):
        assert not (OVERLAY / name).exists(), f"{name} in the overlay (users come from RELAYBOX_USERS)"
    for defconfig in DEFCONFIGS:
        assert "ROOT_PASSWD" not in defconfig.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify on copies whose ExecStart is /bin/true (the real commands are not here)."""
    units = [p for p in all_units() if not p.parent.name.endswith(".d")]
    copies = []
    for unit in units:
        text = re.sub(r"^(Exec\w+=)[-@:+!]*\S+", r"\1/bin/true", unit.read_text(), flags=re.M)
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(str(copy))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *copies],
                       capture_output=True, text=True, cwd=tmp_path)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                # names of units that exist only on the device
                if line.strip() and not re.search(r"(Unit|unit) \S+ not found|Failed to load", line)]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


# --- the Raspberry Pi Imager reader (runs on the host with test directories) --------------------


def run_imager_config(tmp_path, user_data, network_config):
    src = tmp_path / "p1"
    src.mkdir()
    if user_data is not None:
        (src / "user-data").write_text(user_data.replace("\n", "\r\n"))
    if network_config is not None:
        (src / "network-config").write_text(network_config.replace("\n", "\r\n"))
    out = tmp_path / "out"
    env = dict(os.environ, RELAYBOX_IMAGER_SRC=str(src), RELAYBOX_IMAGER_OUT=str(out))
    r = subprocess.run(["sh", str(LIBEXEC / "imager-config")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


IMAGER_NETWORK = """network:
  version: 2
  wifis:
    renderall:
      dhcp4: true
      optional: true
      access-points:
        "Caf\u00e9: \\"guest\\"":
          password: "%s"
          hidden: true
      regulatory-domain: "de"
  # a comment
"""
PSK = "4a" * 32


def test_imager_reader_hostname_and_wifi(tmp_path):
    user_data = ("#cloud-config\nhostname: Garden-Relay\nmanage_etc_hosts: true\nusers:\n- name: pi\n"
                 "  passwd: $5$salt$0123456789abcdef0123456789abcdef\n  ssh_authorized_keys:\n"
                 "    - ssh-ed25519 AAAA test\n")
    out = run_imager_config(tmp_path, user_data, IMAGER_NETWORK % PSK)
    assert (out / "hostname").read_text() == "garden-relay\n"
    conf = (out / "wpa_supplicant/wpa_supplicant-wlan0.conf").read_text()
    assert "country=DE\n" in conf
    ssid_hex = 'Café: "guest"'.encode().hex()
    assert f"\tssid={ssid_hex}\n" in conf
    assert f"\tpsk={PSK}\n" in conf and "\tscan_ssid=1\n" in conf
    # nothing of the users, passwords or keys is written anywhere
    written = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert "$5$" not in written and "ssh-ed25519" not in written


@pytest.mark.skipif(shutil.which("wpa_passphrase") is None, reason="wpa_passphrase (wpasupplicant) not installed")
def test_imager_reader_derives_the_psk(tmp_path):
    out = run_imager_config(tmp_path, None, IMAGER_NETWORK % "correct horse battery")
    conf = (out / "wpa_supplicant/wpa_supplicant-wlan0.conf").read_text()
    assert re.search(r"^\tpsk=[0-9a-f]{64}$", conf, re.M) and "correct horse" not in conf


def test_imager_reader_rejects_bad_input(tmp_path):
    out = run_imager_config(tmp_path, "#cloud-config\nhostname: ../../etc/x\n",
                            "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n")
    assert not (out / "hostname").exists()
    assert not (out / "wpa_supplicant/wpa_supplicant-wlan0.conf").exists()


# --- the built image (scripts/build-image.sh) --------------------------------------------------

BUILD = REPO / "build"
REQUIRED = os.environ.get("RELAYBOX_IMAGE_REQUIRED") == "1"


def built_image():
    """The raw image of the last complete build (its summary is written last), or skip."""
    summaries = sorted(BUILD.glob("relaybox-*-rpi-arm64.summary.txt"), key=lambda p: p.stat().st_mtime)
    if summaries:
        img = summaries[-1].with_name(summaries[-1].name.replace(".summary.txt", ".img"))
        if img.is_file() and Path(f"{img}.xz.sha256").is_file():
            return img
    if REQUIRED:
        pytest.fail("no built image in build/ (RELAYBOX_IMAGE_REQUIRED=1)")
    pytest.skip("no built image in build/ (scripts/build-image.sh makes one)")


def partitions(img):
    pt = json.loads(subprocess.run(["sfdisk", "-J", str(img)], capture_output=True, text=True, check=True).stdout)
    pt = pt["partitiontable"]
    return pt, {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in pt["partitions"]}


def fat_files(img, part, tmp_path):
    """{name: bytes} of the top directory of FAT partition `part` (mtools, no mount)."""
    if shutil.which("mcopy") is None:
        pytest.skip("mtools not installed")
    _, parts = partitions(img)
    off = parts[part]["start"] * 512
    dest = tmp_path / f"p{part}"
    dest.mkdir()
    r = subprocess.run(["mcopy", "-s", "-n", "-i", f"{img}@@{off}", "::*", str(dest)], capture_output=True, text=True)
    assert r.returncode == 0 or "No match" in r.stderr, r.stderr
    return {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}


def test_built_image_partition_table():
    img = built_image()
    pt, parts = partitions(img)
    mib = 2048  # sectors
    assert pt["label"] == "dos" and pt["id"].lower() == "0x52424f58"
    assert sorted(parts) == [1, 2, 3, 4, 5, 6, 7]
    types = {n: p["type"].lower().lstrip("0") for n, p in parts.items()}
    assert types == {1: "c", 2: "c", 3: "c", 4: "5", 5: "83", 6: "83", 7: "83"}, types
    assert parts[1].get("bootable")
    assert parts[2]["size"] >= 256 * mib and parts[3]["size"] == parts[2]["size"]
    assert parts[5]["size"] == parts[6]["size"] >= 512 * mib
    ext_end = parts[4]["start"] + parts[4]["size"]
    for n in (5, 6, 7):
        assert parts[4]["start"] < parts[n]["start"] and parts[n]["start"] + parts[n]["size"] <= ext_end
    # the data partition is last, so first boot can grow p4 and p7 to the end of the card
    assert parts[7]["start"] + parts[7]["size"] == ext_end
    assert ext_end <= img.stat().st_size // 512
    with open(img, "rb") as f:
        f.seek(parts[7]["start"] * 512 + 1024)
        sb = f.read(1024)
    assert sb[0x38:0x3A] == b"\x53\xef", "p7 is not ext4"
    assert sb[0x78:0x88].rstrip(b"\0") == b"relaybox-data"
    with open(img, "rb") as f:
        f.seek(parts[5]["start"] * 512 + 1024)
        assert f.read(4) == bytes.fromhex("e2e1f5e0"), "p5 is not EROFS"


def test_built_image_config_partition(tmp_path):
    img = built_image()
    files = fat_files(img, 1, tmp_path)
    auto = files["autoboot.txt"].decode().split()
    assert auto[:3] == ["[all]", "tryboot_a_b=1", "boot_partition=2"], auto
    # Imager's files are not in the image; they are what the user adds
    assert "user-data" not in files and "network-config" not in files


def test_built_image_boot_files_for_pi4_and_pi5(tmp_path):
    img = built_image()
    files = fat_files(img, 2, tmp_path)
    for name in ("Image", "initrd.img", "config.txt", "cmdline.txt",
                 "start4.elf", "fixup4.dat",  # Pi 4 firmware (the Pi 5's is in its EEPROM)
                 "bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb",
                 "bcm2712-rpi-5-b.dtb", "bcm2712d0-rpi-5-b.dtb"):
        assert name in files, f"{name} missing on boot A; there: {sorted(files)}"
    assert files["Image"][0x38:0x3C] == b"ARM\x64", "Image is not an arm64 kernel Image"
    for dtb in (n for n in files if n.endswith(".dtb")):
        assert files[dtb][:4] == bytes.fromhex("d00dfeed"), dtb
    config = files["config.txt"].decode()
    sections = re.findall(r"^\[(\w+)\]", config, re.M)
    assert "pi4" in sections and "pi5" in sections
    all_part = config.split("[pi4]")[0]
    assert re.search(r"^arm_64bit=1$", all_part, re.M)
    assert re.search(r"^kernel=Image$", all_part, re.M)
    assert re.search(r"^initramfs initrd.img followkernel$", all_part, re.M)
    pi4 = config.split("[pi4]")[1].split("[")[0]
    assert "start_file=start4.elf" in pi4 and "fixup_file=fixup4.dat" in pi4
    cmdline = files["cmdline.txt"].decode()
    assert cmdline.count("\n") == 1
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in cmdline.split())
    pt, parts = partitions(img)
    assert args["root"] == f"PARTUUID={pt['id'].lower()[2:]}-05" and args["rootfstype"] == "erofs" and "ro" in args
    # the initramfs can mount the root from a Pi 4 or Pi 5 SD card and from QEMU's virtio disk
    initrd = gzip.decompress(files["initrd.img"])
    for mod in (b"sdhci-iproc.ko", b"sdhci-brcmstb.ko", b"erofs.ko", b"virtio_blk.ko"):
        assert mod in initrd, f"{mod.decode()} not in the initramfs"
    assert b"by_partuuid" in initrd
    # nothing secret on the boot partition either
    for name, data in files.items():
        assert not PRIVATE_KEY_BLOCK.search(data.decode("latin-1")), name


def test_built_image_imager_json():
    img = built_image()
    xz = Path(f"{img}.xz")
    doc = json.loads((img.parent / "relaybox.json").read_text())
    (entry,) = doc["os_list"]
    for key in ("name", "description", "icon", "url", "extract_size", "extract_sha256", "image_download_size",
                "image_download_sha256", "release_date", "devices", "init_format"):
        assert key in entry, key
    assert entry["init_format"] == "cloudinit"
    assert {"pi4-64bit", "pi5-64bit"} <= set(entry["devices"])
    assert entry["url"].endswith(xz.name)
    assert entry["image_download_size"] == xz.stat().st_size
    assert entry["extract_size"] == img.stat().st_size
    sha = Path(f"{xz}.sha256").read_text().split()
    assert sha == [entry["image_download_sha256"], xz.name]
    assert xz.stat().st_size <= 200 * 2**20, "compressed image over 200 MB"


def test_built_image_root_has_no_secrets(tmp_path):
    img = built_image()
    if shutil.which("fsck.erofs") is None:
        pytest.skip("erofs-utils not installed")
    _, parts = partitions(img)
    root = tmp_path / "root.erofs"
    with open(img, "rb") as src, open(root, "wb") as dst:
        src.seek(parts[5]["start"] * 512)
        left = parts[5]["size"] * 512
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                break
            dst.write(chunk)
            left -= len(chunk)
    out = tmp_path / "root"
    r = subprocess.run(["fsck.erofs", f"--extract={out}", "--no-preserve", str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    root.unlink()
    shadow = (out / "etc/shadow").read_text()
    assert not re.search(r"^[^:]+:\$", shadow, re.M), "a password hash in /etc/shadow"
    assert not PASSWORD_HASH.search(shadow)
    for p in out.rglob("*"):
        if p.is_symlink() or not p.is_file() or p.suffix in (".xz", ".ko"):
            continue
        text = p.read_bytes().decode("latin-1")
        assert not PRIVATE_KEY_BLOCK.search(text), f"private key in {p.relative_to(out)}"
        if PRIVATE_KEY.search(text):
            assert b"\0" in text[:4096].encode("latin-1"), f"private key marker in the text file {p.relative_to(out)}"
    assert not list(out.glob("etc/ssh/ssh_host_*")), "SSH host keys in the image"
    assert not (out / "root/.ssh").exists() and not list(out.glob("home/*/.ssh"))
    # version stamping
    osr = (out / "usr/lib/os-release").read_text()
    assert "IMAGE_ID=relaybox" in osr and re.search(r'^BUILD_ID="[^"]+"$', osr, re.M)
    assert re.search(r'^VERSION_ID="[^"]+"$', osr, re.M)
    # what a Pi 4 and a Pi 5 need from the root: SD, Ethernet (genet; macb on RP1), Wi-Fi + firmware
    (kdir,) = list((out / "usr/lib/modules").iterdir())
    mods = {p.name.split(".ko")[0] for p in kdir.rglob("*.ko*")}
    for m in ("sdhci-iproc", "sdhci-brcmstb", "genet", "macb", "rp1_pci", "clk-rp1", "pinctrl-rp1",
              "brcmfmac", "cfg80211"):
        assert m in mods, f"kernel module {m} missing"
    fw = out / "usr/lib/firmware"
    assert list(fw.glob("brcm/brcmfmac43455-sdio.raspberrypi,4-model-b.txt"))
    assert list(fw.glob("brcm/brcmfmac43455-sdio.raspberrypi,5-model-b.txt"))
    assert list(fw.glob("cypress/cyfmac43455-sdio.bin")) and list(fw.glob("regulatory.db"))
    assert (out / "usr/sbin/wpa_supplicant").exists() and (out / "usr/bin/wpa_passphrase").exists()


# --- the built image: updates (issue 15) ---------------------------------------------------------


def read_partition(img, part, dest, size=None):
    _, parts = partitions(img)
    left = size if size is not None else parts[part]["size"] * 512
    with open(img, "rb") as src, open(dest, "wb") as dst:
        src.seek(parts[part]["start"] * 512)
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                break
            dst.write(chunk)
            left -= len(chunk)
    return dest


def vermagic(ko: bytes) -> str:
    m = re.search(rb"vermagic=([^\0]*)\0", ko)
    assert m, "no vermagic in the module"
    return m.group(1).decode()


def bundle_parts(path):
    """(manifest, signature, offset of the payload) of a relaybox .update bundle (UPD-IFACE §1)."""
    with open(path, "rb") as f:
        assert f.read(8) == b"RBXUPD01"
        mlen = int.from_bytes(f.read(4), "little")
        manifest = json.loads(f.read(mlen))
        sig = f.read(64)
    return manifest, sig, 12 + mlen + 64


def test_built_image_tryboot_module_and_update_units(tmp_path):
    """The root has the relaybox_tryboot module built for its own kernel (vermagic equal to the
    kernel's modules'), loaded at boot, the update key and the enabled update units."""
    img = built_image()
    if shutil.which("fsck.erofs") is None:
        pytest.skip("erofs-utils not installed")
    root = read_partition(img, 5, tmp_path / "root.erofs")
    out = tmp_path / "root"
    r = subprocess.run(["fsck.erofs", f"--extract={out}", "--no-preserve", str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    root.unlink()
    (kdir,) = list((out / "usr/lib/modules").iterdir())
    ko = kdir / "updates/relaybox_tryboot.ko"
    assert ko.is_file(), "relaybox_tryboot.ko is not in the root"
    data = ko.read_bytes()
    assert data[:4] == b"\x7fELF" and data[0x12:0x14] == (183).to_bytes(2, "little"), "not an arm64 ELF module"
    # the kernel's own modules say which vermagic it accepts
    ref = next(kdir.rglob("erofs.ko*"), None) or next(kdir.rglob("*.ko.xz"))
    raw = ref.read_bytes()
    if ref.name.endswith(".xz"):
        import lzma
        raw = lzma.decompress(raw)
    elif ref.name.endswith(".zst"):
        raw = subprocess.run(["zstd", "-qdc", str(ref)], capture_output=True, check=True).stdout
    assert vermagic(data) == vermagic(raw), f"vermagic {vermagic(data)!r} != the kernel's {vermagic(raw)!r}"
    assert vermagic(data).split()[0] == kdir.name
    assert re.search(rb"license=GPL\0", data), "not GPL: the firmware symbols are EXPORT_SYMBOL_GPL"
    assert b"rpi_firmware_property" in data and b"rpi_firmware_get" in data
    assert "updates/relaybox_tryboot.ko:" in (kdir / "modules.dep").read_text(), "depmod did not see it"
    loads = [ln.strip() for p in (out / "usr/lib/modules-load.d").glob("*.conf") for ln in p.read_text().splitlines()]
    assert "relaybox_tryboot" in loads, "relaybox_tryboot is not loaded at boot (modules-load.d)"
    key = (out / "usr/share/relaybox/update-key.pub").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n?", key), "update-key.pub is not 64 hex digits"
    wants = {p.name for p in (out / "etc/systemd/system").glob("*.wants/*")}
    for unit in ("relaybox-tryboot-watchdog.service", "relaybox-update.path"):
        assert unit in wants, f"{unit} is not enabled"
    assert (out / "usr/lib/systemd/system/relaybox-update.service").is_file()
    fstab = [ln.split() for ln in (out / "etc/fstab").read_text().splitlines() if ln and not ln.startswith("#")]
    (p1,) = [f for f in fstab if f[1] == "/run/relaybox/firmware"]
    assert p1[0] == "PARTUUID=52424f58-01" and p1[2] == "vfat" and "rw" in p1[3].split(",")


def test_built_image_update_bundle(tmp_path):
    """The .update bundle next to the image: signed manifest of this version, its root image is
    byte for byte the image's root A, its boot image a small FAT with the A/B command lines."""
    img = built_image()
    bundle = Path(str(img).removesuffix(".img") + ".update")
    assert bundle.is_file(), f"no {bundle.name} next to the image"
    manifest, sig, off = bundle_parts(bundle)
    version = re.match(r"relaybox-(.+)-rpi-arm64\.img$", img.name).group(1)
    assert manifest["format"] == 1 and manifest["version"] == version, manifest
    assert manifest["arch"] == "aarch64" and manifest["board"] == "rpi-arm64"
    boot, root = manifest["boot"], manifest["root"]
    assert bundle.stat().st_size == off + boot["size"] + root["size"], "payload size does not match the manifest"
    assert len(sig) == 64
    # the boot image is sized to its content, not the 256 MiB slot
    assert boot["size"] <= 128 * 2**20, f"boot image {boot['size']} bytes"
    with open(bundle, "rb") as f:
        f.seek(off)
        boot_img = f.read(boot["size"])
        h = hashlib.sha256()
        left = root["size"]
        while left:
            chunk = f.read(min(left, 1 << 20))
            h.update(chunk)
            left -= len(chunk)
    assert hashlib.sha256(boot_img).hexdigest() == boot["sha256"]
    assert h.hexdigest() == root["sha256"]
    p5 = read_partition(img, 5, tmp_path / "p5", size=root["size"])
    assert hashlib.sha256(p5.read_bytes()).hexdigest() == root["sha256"], "the bundle's root is not root A"
    p5.unlink()
    (tmp_path / "boot.img").write_bytes(boot_img)
    files = {}
    for name in ("config.txt", "cmdline.txt", "cmdline-a.txt", "cmdline-b.txt", "Image", "initrd.img"):
        r = subprocess.run(["mtype" if name.endswith(".txt") else "mdir", "-i", str(tmp_path / "boot.img"), f"::{name}"],
                           capture_output=True)
        assert r.returncode == 0, f"{name} not in the bundle's boot image"
        files[name] = r.stdout.decode(errors="replace")
    # one boot image for both slots: the firmware's [boot_partition=N] picks the root
    config = files["config.txt"]
    assert re.search(r"^\[boot_partition=2\]\ncmdline=cmdline-a\.txt$", config, re.M), config
    assert re.search(r"^\[boot_partition=3\]\ncmdline=cmdline-b\.txt$", config, re.M), config
    assert "root=PARTUUID=52424f58-05 " in files["cmdline-a.txt"] and "root=PARTUUID=52424f58-06 " in files["cmdline-b.txt"]
    assert files["cmdline.txt"] == files["cmdline-a.txt"]
    # the signature, with relaybox itself when a host build is there
    binary = os.environ.get("RELAYBOX_BIN", str(REPO / "target/release/relaybox"))
    if Path(binary).is_file():
        key = tmp_path / "update-key.pub"
        summary = img.with_name(img.name.removesuffix(".img") + ".summary.txt").read_text()
        if "TEST-SIGNED" in summary:
            shutil.copy(REPO / "image/test-keys/update-key.pub", key)
            r = subprocess.run([binary, "update-bundle", "verify", str(bundle), "--pubkey", str(key)],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
