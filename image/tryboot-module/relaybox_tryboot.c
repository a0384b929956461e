// SPDX-License-Identifier: GPL-2.0
/*
 * relaybox_tryboot: lets root set the Raspberry Pi firmware's one-shot "tryboot" flag.
 *
 * Debian's arm64 kernel has neither the Raspberry Pi kernel's `reboot "0 tryboot"` nor /dev/vcio,
 * so user space cannot reach the firmware mailbox. This module exposes
 * /sys/kernel/relaybox_tryboot/arm (0600): writing 1 sends firmware property 0x00038064
 * (SET_REBOOT_FLAGS) with the value 1 through the kernel's own firmware driver
 * (rpi_firmware_property(), exported by drivers/firmware/raspberrypi.c); the firmware then
 * boots the [tryboot] section of autoboot.txt once, at the next reboot. Writing 0 clears it.
 * Reading returns the last value the firmware accepted.
 *
 * Without a Raspberry Pi firmware node in the device tree (a VM) the module loads but creates
 * no sysfs file, so an updater finds no way to set the flag and refuses to install.
 */
#include <linux/kobject.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/of.h>
#include <linux/sysfs.h>
#include <soc/bcm2835/raspberrypi-firmware.h>

#define RELAYBOX_SET_REBOOT_FLAGS 0x00038064

static struct device_node *fw_node;
static struct kobject *tryboot_kobj;
static DEFINE_MUTEX(tryboot_lock);
static u32 armed;

static ssize_t arm_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(armed));
}

static ssize_t arm_store(struct kobject *kobj, struct kobj_attribute *attr, const char *buf,
			 size_t count)
{
	struct rpi_firmware *fw;
	bool on;
	u32 val;
	int ret;

	ret = kstrtobool(buf, &on);
	if (ret)
		return ret;
	val = on;
	/* looked up per write, not at load: the firmware driver may probe after this module */
	fw = rpi_firmware_get(fw_node);
	if (!fw)
		return -ENODEV;
	mutex_lock(&tryboot_lock);
	ret = rpi_firmware_property(fw, RELAYBOX_SET_REBOOT_FLAGS, &val, sizeof(val));
	if (!ret)
		WRITE_ONCE(armed, on);
	mutex_unlock(&tryboot_lock);
	rpi_firmware_put(fw);
	if (ret) {
		pr_err("relaybox_tryboot: firmware refused SET_REBOOT_FLAGS=%u: %d\n", on, ret);
		return ret;
	}
	pr_info("relaybox_tryboot: tryboot flag %s\n", on ? "set" : "cleared");
	return count;
}

static struct kobj_attribute arm_attr = __ATTR(arm, 0600, arm_show, arm_store);

static int __init relaybox_tryboot_init(void)
{
	int ret;

	fw_node = of_find_compatible_node(NULL, NULL, "raspberrypi,bcm2835-firmware");
	if (!fw_node) {
		pr_info("relaybox_tryboot: no Raspberry Pi firmware in the device tree; no flag to set\n");
		return 0;
	}
	tryboot_kobj = kobject_create_and_add("relaybox_tryboot", kernel_kobj);
	if (!tryboot_kobj) {
		of_node_put(fw_node);
		return -ENOMEM;
	}
	ret = sysfs_create_file(tryboot_kobj, &arm_attr.attr);
	if (ret) {
		kobject_put(tryboot_kobj);
		of_node_put(fw_node);
		return ret;
	}
	return 0;
}

static void __exit relaybox_tryboot_exit(void)
{
	if (tryboot_kobj)
		kobject_put(tryboot_kobj);
	of_node_put(fw_node);
}

module_init(relaybox_tryboot_init);
module_exit(relaybox_tryboot_exit);
MODULE_DESCRIPTION("relaybox: set the Raspberry Pi firmware's tryboot flag (SET_REBOOT_FLAGS)");
MODULE_LICENSE("GPL");
