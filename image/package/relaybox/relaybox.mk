################################################################################
#
# relaybox
#
################################################################################

# Release builds use the source tarball of a tagged release: Buildroot
# downloads it, vendors the crates (cargo vendor --locked) into
# relaybox-$(RELAYBOX_VERSION)-cargo4.tar.gz and checks relaybox.hash.
#
# Development: build your working tree instead, by creating a local.mk
# next to .config (or BR2_PACKAGE_OVERRIDE_FILE) containing
#
#   RELAYBOX_OVERRIDE_SRCDIR = /path/to/relaybox
#
# Buildroot then rsyncs that tree (no download, no hash check, no vendoring);
# RELAYBOX_VENDOR_OVERRIDE below runs `cargo vendor` in the copy, which needs
# the network. `make relaybox-rebuild` picks up later edits.
RELAYBOX_VERSION = 0.1.0
RELAYBOX_SITE = https://github.com/relaybox/relaybox/releases/download/v$(RELAYBOX_VERSION)
RELAYBOX_SOURCE = relaybox-$(RELAYBOX_VERSION).tar.gz
RELAYBOX_LICENSE = AGPL-3.0-or-later
RELAYBOX_LICENSE_FILES = LICENSE
# Cargo.toml of the binary crate; Cargo.lock is at the workspace root.
RELAYBOX_SUBDIR = relay

# Login disabled (*), no shell, home is the data directory.
define RELAYBOX_USERS
	relaybox -1 relaybox -1 * /data/relaybox - - relaybox chatmail relay
endef

RELAYBOX_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude target --exclude fuzz/target --exclude tests/.venv

ifneq ($(RELAYBOX_OVERRIDE_SRCDIR),)
define RELAYBOX_VENDOR_OVERRIDE
	cd $(@D) && mkdir -p .cargo && \
		$(HOST_MAKE_ENV) $(PKG_CARGO_ENV) \
		cargo vendor --locked --manifest-path $(RELAYBOX_SUBDIR)/Cargo.toml VENDOR \
		> .cargo/config.toml
endef
RELAYBOX_POST_RSYNC_HOOKS += RELAYBOX_VENDOR_OVERRIDE
endif

$(eval $(cargo-package))
