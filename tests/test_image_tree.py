"""Static checks of the appliance image tree (image/, buildroot-overlay/), without Buildroot.

What can be checked here is checked: every file a defconfig names exists, the overlay path, the
read-only compressed root, the cargo-package fields, the partition layout agreeing between the
genimage config, cmdline.txt, the first-boot scripts and fstab, the hardening of relaybox.service,
and that nothing secret is in the tree. Building and booting the image is not (scripts/build-image.sh
needs Buildroot and hours; scripts/test-image.sh boots the overlay in QEMU).
"""

import configparser
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
    root_index = [name for name, _ in parts].index("rootfs") + 1
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
    assert names == ["boot", "rootfs", "data"]
    attrs = dict(parts)
    disk_sh = LIBEXEC / "disk.sh"
    data_label = shell_var(disk_sh, "DATA_LABEL")
    boot_label = shell_var(disk_sh, "BOOT_LABEL")
    assert data_label == "relaybox-data"
    assert int(shell_var(disk_sh, "DATA_PARTNO")) == names.index("data") + 1
    assert int(shell_var(disk_sh, "BOOT_PARTNO")) == names.index("boot") + 1
    # boot: FAT, labelled as the first-boot script expects
    boot_img = attrs["boot"]["image"]
    assert "vfat" in images[boot_img] and fs_label(images[boot_img]) == boot_label
    assert attrs["boot"]["partition-type"].lower() == "0xc"
    # root: the EROFS image Buildroot makes
    assert attrs["rootfs"]["image"] == "rootfs.erofs"
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
    scripts = [LIBEXEC / n for n in ("firstboot", "data-prepare", "console", "disk.sh")]
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
