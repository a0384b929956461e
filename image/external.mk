include $(sort $(wildcard $(BR2_EXTERNAL_RELAYBOX_PATH)/package/*/*.mk))
