//! Numeric constants of OpenFlow 1.3 (names follow `openflow-1.3.h`).
//!
//! Only the wire values live here; the typed message structs use plain
//! integers for flags and enumerations so that values unknown to this crate
//! survive a decode/encode round trip.

macro_rules! consts {
    ($( $name:ident : $ty:ty = $val:expr, $doc:expr; )*) => {
        $( #[doc = $doc] pub const $name: $ty = $val; )*
    };
}

/// The OpenFlow version this crate speaks (`0x04`, OpenFlow 1.3).
pub const OFP_VERSION: u8 = 0x04;
/// Size of the common OpenFlow header.
pub const OFP_HEADER_LEN: usize = 8;
/// Bytes of an offending message an OFPT_ERROR carries (at least 64 per the spec).
pub const ERROR_DATA_LEN: usize = 64;

// Message types.
consts! {
    OFPT_HELLO: u8 = 0, "Symmetric: HELLO.";
    OFPT_ERROR: u8 = 1, "Symmetric: ERROR.";
    OFPT_ECHO_REQUEST: u8 = 2, "Symmetric: ECHO_REQUEST.";
    OFPT_ECHO_REPLY: u8 = 3, "Symmetric: ECHO_REPLY.";
    OFPT_EXPERIMENTER: u8 = 4, "Symmetric: EXPERIMENTER.";
    OFPT_FEATURES_REQUEST: u8 = 5, "Controller/switch: FEATURES_REQUEST.";
    OFPT_FEATURES_REPLY: u8 = 6, "Controller/switch: FEATURES_REPLY.";
    OFPT_GET_CONFIG_REQUEST: u8 = 7, "Controller/switch: GET_CONFIG_REQUEST.";
    OFPT_GET_CONFIG_REPLY: u8 = 8, "Controller/switch: GET_CONFIG_REPLY.";
    OFPT_SET_CONFIG: u8 = 9, "Controller/switch: SET_CONFIG.";
    OFPT_PACKET_IN: u8 = 10, "Async: PACKET_IN.";
    OFPT_FLOW_REMOVED: u8 = 11, "Async: FLOW_REMOVED.";
    OFPT_PORT_STATUS: u8 = 12, "Async: PORT_STATUS.";
    OFPT_PACKET_OUT: u8 = 13, "Controller command: PACKET_OUT.";
    OFPT_FLOW_MOD: u8 = 14, "Controller command: FLOW_MOD.";
    OFPT_GROUP_MOD: u8 = 15, "Controller command: GROUP_MOD.";
    OFPT_PORT_MOD: u8 = 16, "Controller command: PORT_MOD.";
    OFPT_TABLE_MOD: u8 = 17, "Controller command: TABLE_MOD.";
    OFPT_MULTIPART_REQUEST: u8 = 18, "Multipart request.";
    OFPT_MULTIPART_REPLY: u8 = 19, "Multipart reply.";
    OFPT_BARRIER_REQUEST: u8 = 20, "Barrier request.";
    OFPT_BARRIER_REPLY: u8 = 21, "Barrier reply.";
    OFPT_QUEUE_GET_CONFIG_REQUEST: u8 = 22, "Queue configuration request.";
    OFPT_QUEUE_GET_CONFIG_REPLY: u8 = 23, "Queue configuration reply.";
    OFPT_ROLE_REQUEST: u8 = 24, "Controller role request.";
    OFPT_ROLE_REPLY: u8 = 25, "Controller role reply.";
    OFPT_GET_ASYNC_REQUEST: u8 = 26, "Asynchronous message configuration request.";
    OFPT_GET_ASYNC_REPLY: u8 = 27, "Asynchronous message configuration reply.";
    OFPT_SET_ASYNC: u8 = 28, "Set asynchronous message configuration.";
    OFPT_METER_MOD: u8 = 29, "Meter configuration.";
}

// Reserved port numbers.
consts! {
    OFPP_MAX: u32 = 0xffff_ff00, "Maximum number of physical and logical switch ports.";
    OFPP_IN_PORT: u32 = 0xffff_fff8, "Send the packet out the input port.";
    OFPP_TABLE: u32 = 0xffff_fff9, "Submit the packet to the first flow table (PACKET_OUT only).";
    OFPP_NORMAL: u32 = 0xffff_fffa, "Forward using non-OpenFlow pipeline.";
    OFPP_FLOOD: u32 = 0xffff_fffb, "Flood using non-OpenFlow pipeline.";
    OFPP_ALL: u32 = 0xffff_fffc, "All standard ports except input port.";
    OFPP_CONTROLLER: u32 = 0xffff_fffd, "Send to controller.";
    OFPP_LOCAL: u32 = 0xffff_fffe, "Local OpenFlow \"port\".";
    OFPP_ANY: u32 = 0xffff_ffff, "Wildcard port (used in requests when no port is specified).";
}

// Buffers, tables, groups, meters.
consts! {
    OFP_NO_BUFFER: u32 = 0xffff_ffff, "buffer_id meaning \"no buffered packet\".";
    OFPTT_MAX: u8 = 0xfe, "Last usable table number.";
    OFPTT_ALL: u8 = 0xff, "Wildcard table used for table config, flow stats and flow deletes.";
    OFPG_MAX: u32 = 0xffff_ff00, "Last usable group number.";
    OFPG_ALL: u32 = 0xffff_fffc, "Represents all groups for group delete commands.";
    OFPG_ANY: u32 = 0xffff_ffff, "Wildcard group used only for flow stats requests.";
    OFPM_MAX: u32 = 0xffff_0000, "Last usable meter.";
    OFPM_SLOWPATH: u32 = 0xffff_fffd, "Meter for slow datapath.";
    OFPM_CONTROLLER: u32 = 0xffff_fffe, "Meter for controller connection.";
    OFPM_ALL: u32 = 0xffff_ffff, "Represents all meters for stat requests commands.";
    OFPCML_MAX: u16 = 0xffe5, "Maximum max_len value which can be used to request a specific byte length.";
    OFPCML_NO_BUFFER: u16 = 0xffff, "Do not buffer the packet; send it whole to the controller.";
    OFPVID_PRESENT: u16 = 0x1000, "VLAN_VID bit: a VLAN id is present.";
    OFPVID_NONE: u16 = 0x0000, "VLAN_VID value: no VLAN id.";
}

// Flow mod commands and flags.
consts! {
    OFPFC_ADD: u8 = 0, "New flow.";
    OFPFC_MODIFY: u8 = 1, "Modify all matching flows.";
    OFPFC_MODIFY_STRICT: u8 = 2, "Modify entry strictly matching wildcards and priority.";
    OFPFC_DELETE: u8 = 3, "Delete all matching flows.";
    OFPFC_DELETE_STRICT: u8 = 4, "Delete entry strictly matching wildcards and priority.";
    OFPFF_SEND_FLOW_REM: u16 = 1 << 0, "Send flow removed message when flow expires or is deleted.";
    OFPFF_CHECK_OVERLAP: u16 = 1 << 1, "Check for overlapping entries first.";
    OFPFF_RESET_COUNTS: u16 = 1 << 2, "Reset flow packet and byte counts.";
    OFPFF_NO_PKT_COUNTS: u16 = 1 << 3, "Don't keep track of packet count.";
    OFPFF_NO_BYT_COUNTS: u16 = 1 << 4, "Don't keep track of byte count.";
    OFP_DEFAULT_PRIORITY: u16 = 0x8000, "Default flow priority.";
}

// Reasons.
consts! {
    OFPR_NO_MATCH: u8 = 0, "PACKET_IN reason: no matching flow (table-miss flow entry).";
    OFPR_ACTION: u8 = 1, "PACKET_IN reason: action explicitly output to controller.";
    OFPR_INVALID_TTL: u8 = 2, "PACKET_IN reason: packet has invalid TTL.";
    OFPRR_IDLE_TIMEOUT: u8 = 0, "FLOW_REMOVED reason: idle timeout.";
    OFPRR_HARD_TIMEOUT: u8 = 1, "FLOW_REMOVED reason: hard timeout.";
    OFPRR_DELETE: u8 = 2, "FLOW_REMOVED reason: evicted by a DELETE flow mod.";
    OFPRR_GROUP_DELETE: u8 = 3, "FLOW_REMOVED reason: group was removed.";
    OFPPR_ADD: u8 = 0, "PORT_STATUS reason: the port was added.";
    OFPPR_DELETE: u8 = 1, "PORT_STATUS reason: the port was removed.";
    OFPPR_MODIFY: u8 = 2, "PORT_STATUS reason: some attribute of the port has changed.";
}

// Port config/state/features.
consts! {
    OFPPC_PORT_DOWN: u32 = 1 << 0, "Port is administratively down.";
    OFPPC_NO_RECV: u32 = 1 << 2, "Drop all packets received by port.";
    OFPPC_NO_FWD: u32 = 1 << 5, "Drop packets forwarded to port.";
    OFPPC_NO_PACKET_IN: u32 = 1 << 6, "Do not send packet-in msgs for port.";
    OFPPS_LINK_DOWN: u32 = 1 << 0, "No physical link present.";
    OFPPS_BLOCKED: u32 = 1 << 1, "Port is blocked.";
    OFPPS_LIVE: u32 = 1 << 2, "Live for Fast Failover Group.";
    OFPPF_10GB_FD: u32 = 1 << 6, "10 Gb full-duplex rate support.";
    OFPPF_COPPER: u32 = 1 << 11, "Copper medium.";
}

// Switch capabilities and config.
consts! {
    OFPC_FLOW_STATS: u32 = 1 << 0, "Flow statistics.";
    OFPC_TABLE_STATS: u32 = 1 << 1, "Table statistics.";
    OFPC_PORT_STATS: u32 = 1 << 2, "Port statistics.";
    OFPC_GROUP_STATS: u32 = 1 << 3, "Group statistics.";
    OFPC_IP_REASM: u32 = 1 << 5, "Can reassemble IP fragments.";
    OFPC_QUEUE_STATS: u32 = 1 << 6, "Queue statistics.";
    OFPC_PORT_BLOCKED: u32 = 1 << 8, "Switch will block looping ports.";
    OFPC_FRAG_NORMAL: u16 = 0, "No special handling for fragments.";
    OFPC_FRAG_DROP: u16 = 1, "Drop fragments.";
    OFPC_FRAG_REASM: u16 = 2, "Reassemble (only if OFPC_IP_REASM set).";
}

// Controller roles.
consts! {
    OFPCR_ROLE_NOCHANGE: u32 = 0, "Don't change current role.";
    OFPCR_ROLE_EQUAL: u32 = 1, "Default role, full access.";
    OFPCR_ROLE_MASTER: u32 = 2, "Full access, at most one master.";
    OFPCR_ROLE_SLAVE: u32 = 3, "Read-only access.";
}

// Multipart types and flags.
consts! {
    OFPMP_DESC: u16 = 0, "Description of this OpenFlow switch.";
    OFPMP_FLOW: u16 = 1, "Individual flow statistics.";
    OFPMP_AGGREGATE: u16 = 2, "Aggregate flow statistics.";
    OFPMP_TABLE: u16 = 3, "Flow table statistics.";
    OFPMP_PORT_STATS: u16 = 4, "Port statistics.";
    OFPMP_QUEUE: u16 = 5, "Queue statistics for a port.";
    OFPMP_GROUP: u16 = 6, "Group counter statistics.";
    OFPMP_GROUP_DESC: u16 = 7, "Group description.";
    OFPMP_GROUP_FEATURES: u16 = 8, "Group features.";
    OFPMP_METER: u16 = 9, "Meter statistics.";
    OFPMP_METER_CONFIG: u16 = 10, "Meter configuration.";
    OFPMP_METER_FEATURES: u16 = 11, "Meter features.";
    OFPMP_TABLE_FEATURES: u16 = 12, "Table features.";
    OFPMP_PORT_DESC: u16 = 13, "Port description.";
    OFPMP_EXPERIMENTER: u16 = 0xffff, "Experimenter extension.";
    OFPMPF_REQ_MORE: u16 = 1, "Multipart request flag: more requests to follow.";
    OFPMPF_REPLY_MORE: u16 = 1, "Multipart reply flag: more replies to follow.";
}

// Group and meter commands.
consts! {
    OFPGC_ADD: u16 = 0, "New group.";
    OFPGC_MODIFY: u16 = 1, "Modify all matching groups.";
    OFPGC_DELETE: u16 = 2, "Delete all matching groups.";
    OFPGT_ALL: u8 = 0, "Group type: all (multicast/broadcast).";
    OFPGT_SELECT: u8 = 1, "Group type: select.";
    OFPGT_INDIRECT: u8 = 2, "Group type: indirect.";
    OFPGT_FF: u8 = 3, "Group type: fast failover.";
    OFPMC_ADD: u16 = 0, "New meter.";
    OFPMC_MODIFY: u16 = 1, "Modify specified meter.";
    OFPMC_DELETE: u16 = 2, "Delete specified meter.";
    OFPMF_KBPS: u16 = 1 << 0, "Meter rate value in kb/s.";
    OFPMF_PKTPS: u16 = 1 << 1, "Meter rate value in packet/sec.";
    OFPMF_BURST: u16 = 1 << 2, "Do burst size.";
    OFPMF_STATS: u16 = 1 << 3, "Collect statistics.";
    OFPMBT_DROP: u16 = 1, "Meter band: drop packet.";
    OFPMBT_DSCP_REMARK: u16 = 2, "Meter band: remark DSCP in the IP header.";
    OFPMBT_EXPERIMENTER: u16 = 0xffff, "Meter band: experimenter.";
}

// OXM classes.
consts! {
    OFPXMC_NXM_0: u16 = 0x0000, "OXM class: Nicira/OVS NXM 0 (kept raw).";
    OFPXMC_NXM_1: u16 = 0x0001, "OXM class: Nicira/OVS NXM 1 (kept raw).";
    OFPXMC_OPENFLOW_BASIC: u16 = 0x8000, "OXM class: OpenFlow basic (decoded into typed fields).";
    OFPXMC_EXPERIMENTER: u16 = 0xffff, "OXM class: experimenter (kept raw).";
}

// Error types.
consts! {
    OFPET_HELLO_FAILED: u16 = 0, "Hello protocol failed.";
    OFPET_BAD_REQUEST: u16 = 1, "Request was not understood.";
    OFPET_BAD_ACTION: u16 = 2, "Error in action description.";
    OFPET_BAD_INSTRUCTION: u16 = 3, "Error in instruction list.";
    OFPET_BAD_MATCH: u16 = 4, "Error in match.";
    OFPET_FLOW_MOD_FAILED: u16 = 5, "Problem modifying flow entry.";
    OFPET_GROUP_MOD_FAILED: u16 = 6, "Problem modifying group entry.";
    OFPET_PORT_MOD_FAILED: u16 = 7, "Port mod request failed.";
    OFPET_TABLE_MOD_FAILED: u16 = 8, "Table mod request failed.";
    OFPET_QUEUE_OP_FAILED: u16 = 9, "Queue operation failed.";
    OFPET_SWITCH_CONFIG_FAILED: u16 = 10, "Switch config request failed.";
    OFPET_ROLE_REQUEST_FAILED: u16 = 11, "Controller Role request failed.";
    OFPET_METER_MOD_FAILED: u16 = 12, "Error in meter.";
    OFPET_TABLE_FEATURES_FAILED: u16 = 13, "Setting table features failed.";
    OFPET_EXPERIMENTER: u16 = 0xffff, "Experimenter error messages.";
}

// Error codes (the most used ones; all values are accepted on the wire).
consts! {
    OFPHFC_INCOMPATIBLE: u16 = 0, "HELLO_FAILED: no compatible version.";
    OFPHFC_EPERM: u16 = 1, "HELLO_FAILED: permissions error.";
    OFPBRC_BAD_VERSION: u16 = 0, "BAD_REQUEST: ofp_header.version not supported.";
    OFPBRC_BAD_TYPE: u16 = 1, "BAD_REQUEST: ofp_header.type not supported.";
    OFPBRC_BAD_MULTIPART: u16 = 2, "BAD_REQUEST: ofp_multipart_request.type not supported.";
    OFPBRC_BAD_EXPERIMENTER: u16 = 3, "BAD_REQUEST: experimenter id not supported.";
    OFPBRC_BAD_EXP_TYPE: u16 = 4, "BAD_REQUEST: experimenter type not supported.";
    OFPBRC_EPERM: u16 = 5, "BAD_REQUEST: permissions error.";
    OFPBRC_BAD_LEN: u16 = 6, "BAD_REQUEST: wrong request length for type.";
    OFPBRC_BUFFER_EMPTY: u16 = 7, "BAD_REQUEST: specified buffer has already been used.";
    OFPBRC_BUFFER_UNKNOWN: u16 = 8, "BAD_REQUEST: specified buffer does not exist.";
    OFPBRC_BAD_TABLE_ID: u16 = 9, "BAD_REQUEST: specified table-id invalid or does not exist.";
    OFPBRC_IS_SLAVE: u16 = 10, "BAD_REQUEST: denied because controller is slave.";
    OFPBRC_BAD_PORT: u16 = 11, "BAD_REQUEST: invalid port.";
    OFPBRC_BAD_PACKET: u16 = 12, "BAD_REQUEST: invalid packet in packet-out.";
    OFPBRC_MULTIPART_BUFFER_OVERFLOW: u16 = 13, "BAD_REQUEST: multipart request overflowed the assigned buffer.";
    OFPBAC_BAD_TYPE: u16 = 0, "BAD_ACTION: unknown or unsupported action type.";
    OFPBAC_BAD_LEN: u16 = 1, "BAD_ACTION: length problem in actions.";
    OFPBAC_BAD_EXPERIMENTER: u16 = 2, "BAD_ACTION: unknown experimenter id specified.";
    OFPBAC_BAD_EXP_TYPE: u16 = 3, "BAD_ACTION: unknown action for experimenter id.";
    OFPBAC_BAD_OUT_PORT: u16 = 4, "BAD_ACTION: problem validating output port.";
    OFPBAC_BAD_ARGUMENT: u16 = 5, "BAD_ACTION: bad action argument.";
    OFPBAC_TOO_MANY: u16 = 7, "BAD_ACTION: can't handle this many actions.";
    OFPBAC_BAD_OUT_GROUP: u16 = 9, "BAD_ACTION: problem validating output group.";
    OFPBAC_MATCH_INCONSISTENT: u16 = 10, "BAD_ACTION: action can't apply for this match, or set-field missing prerequisite.";
    OFPBAC_UNSUPPORTED_ORDER: u16 = 11, "BAD_ACTION: action order is unsupported for the action list in an apply-actions instruction.";
    OFPBAC_BAD_SET_TYPE: u16 = 13, "BAD_ACTION: unsupported type in SET_FIELD action.";
    OFPBAC_BAD_SET_LEN: u16 = 14, "BAD_ACTION: length problem in SET_FIELD action.";
    OFPBAC_BAD_SET_ARGUMENT: u16 = 15, "BAD_ACTION: bad argument in SET_FIELD action.";
    OFPBIC_UNKNOWN_INST: u16 = 0, "BAD_INSTRUCTION: unknown instruction.";
    OFPBIC_UNSUP_INST: u16 = 1, "BAD_INSTRUCTION: switch or table does not support the instruction.";
    OFPBIC_BAD_TABLE_ID: u16 = 2, "BAD_INSTRUCTION: invalid Table-ID specified.";
    OFPBIC_UNSUP_METADATA: u16 = 3, "BAD_INSTRUCTION: metadata value unsupported by datapath.";
    OFPBIC_UNSUP_METADATA_MASK: u16 = 4, "BAD_INSTRUCTION: metadata mask value unsupported by datapath.";
    OFPBIC_BAD_EXPERIMENTER: u16 = 5, "BAD_INSTRUCTION: unknown experimenter id specified.";
    OFPBIC_BAD_LEN: u16 = 7, "BAD_INSTRUCTION: length problem in instructions.";
    OFPBMC_BAD_TYPE: u16 = 0, "BAD_MATCH: unsupported match type specified by the match.";
    OFPBMC_BAD_LEN: u16 = 1, "BAD_MATCH: length problem in match.";
    OFPBMC_BAD_FIELD: u16 = 6, "BAD_MATCH: unsupported field type in the match.";
    OFPBMC_BAD_VALUE: u16 = 7, "BAD_MATCH: unsupported value in a match field.";
    OFPBMC_BAD_MASK: u16 = 8, "BAD_MATCH: unsupported mask specified in the match.";
    OFPBMC_BAD_PREREQ: u16 = 9, "BAD_MATCH: a prerequisite was not met.";
    OFPBMC_DUP_FIELD: u16 = 10, "BAD_MATCH: a field type was duplicated.";
    OFPFMFC_UNKNOWN: u16 = 0, "FLOW_MOD_FAILED: unspecified error.";
    OFPFMFC_TABLE_FULL: u16 = 1, "FLOW_MOD_FAILED: flow not added because table was full.";
    OFPFMFC_BAD_TABLE_ID: u16 = 2, "FLOW_MOD_FAILED: table does not exist.";
    OFPFMFC_OVERLAP: u16 = 3, "FLOW_MOD_FAILED: attempted to add overlapping flow with CHECK_OVERLAP flag set.";
    OFPFMFC_EPERM: u16 = 4, "FLOW_MOD_FAILED: permissions error.";
    OFPFMFC_BAD_TIMEOUT: u16 = 5, "FLOW_MOD_FAILED: flow not added because of unsupported idle/hard timeout.";
    OFPFMFC_BAD_COMMAND: u16 = 6, "FLOW_MOD_FAILED: unsupported or unknown command.";
    OFPFMFC_BAD_FLAGS: u16 = 7, "FLOW_MOD_FAILED: unsupported or unknown flags.";
    OFPGMFC_GROUP_EXISTS: u16 = 0, "GROUP_MOD_FAILED: group not added because a group ADD attempted to replace an already-present group.";
    OFPGMFC_INVALID_GROUP: u16 = 1, "GROUP_MOD_FAILED: group not added because the group specified is invalid.";
    OFPGMFC_WEIGHT_UNSUPPORTED: u16 = 2, "GROUP_MOD_FAILED: switch does not support unequal load sharing with select groups.";
    OFPGMFC_OUT_OF_GROUPS: u16 = 3, "GROUP_MOD_FAILED: the group table is full.";
    OFPGMFC_OUT_OF_BUCKETS: u16 = 4, "GROUP_MOD_FAILED: the maximum number of action buckets for a group has been exceeded.";
    OFPGMFC_CHAINING_UNSUPPORTED: u16 = 5, "GROUP_MOD_FAILED: switch does not support groups that forward to groups.";
    OFPGMFC_WATCH_UNSUPPORTED: u16 = 6, "GROUP_MOD_FAILED: this group cannot watch the watch_port or watch_group specified.";
    OFPGMFC_LOOP: u16 = 7, "GROUP_MOD_FAILED: group entry would cause a loop.";
    OFPGMFC_UNKNOWN_GROUP: u16 = 8, "GROUP_MOD_FAILED: group not modified because a group MODIFY attempted to modify a non-existent group.";
    OFPGMFC_CHAINED_GROUP: u16 = 9, "GROUP_MOD_FAILED: group not deleted because another group is forwarding to it.";
    OFPGMFC_BAD_TYPE: u16 = 10, "GROUP_MOD_FAILED: unsupported or unknown group type.";
    OFPGMFC_BAD_COMMAND: u16 = 11, "GROUP_MOD_FAILED: unsupported or unknown command.";
    OFPGMFC_BAD_BUCKET: u16 = 12, "GROUP_MOD_FAILED: error in bucket.";
    OFPGMFC_BAD_WATCH: u16 = 13, "GROUP_MOD_FAILED: error in watch port/group.";
    OFPPMFC_BAD_PORT: u16 = 0, "PORT_MOD_FAILED: specified port number does not exist.";
    OFPTMFC_BAD_TABLE: u16 = 0, "TABLE_MOD_FAILED: specified table does not exist.";
    OFPSCFC_BAD_LEN: u16 = 1, "SWITCH_CONFIG_FAILED: specified len is invalid.";
    OFPRRFC_STALE: u16 = 0, "ROLE_REQUEST_FAILED: stale message (old generation_id).";
    OFPRRFC_UNSUP: u16 = 1, "ROLE_REQUEST_FAILED: controller role change unsupported.";
    OFPRRFC_BAD_ROLE: u16 = 2, "ROLE_REQUEST_FAILED: invalid role.";
    OFPMMFC_UNKNOWN: u16 = 0, "METER_MOD_FAILED: unspecified error.";
    OFPMMFC_METER_EXISTS: u16 = 1, "METER_MOD_FAILED: meter not added because a meter ADD attempted to replace an existing meter.";
    OFPMMFC_INVALID_METER: u16 = 2, "METER_MOD_FAILED: meter not added because the meter specified is invalid.";
    OFPMMFC_UNKNOWN_METER: u16 = 3, "METER_MOD_FAILED: meter not modified because a meter MODIFY attempted to modify a non-existent meter.";
    OFPMMFC_BAD_COMMAND: u16 = 4, "METER_MOD_FAILED: unsupported or unknown command.";
    OFPMMFC_BAD_FLAGS: u16 = 5, "METER_MOD_FAILED: flag configuration unsupported.";
    OFPMMFC_BAD_RATE: u16 = 6, "METER_MOD_FAILED: rate unsupported.";
    OFPMMFC_BAD_BURST: u16 = 7, "METER_MOD_FAILED: burst size unsupported.";
    OFPMMFC_BAD_BAND: u16 = 8, "METER_MOD_FAILED: band unsupported.";
    OFPMMFC_BAD_BAND_VALUE: u16 = 9, "METER_MOD_FAILED: band value unsupported.";
    OFPMMFC_OUT_OF_METERS: u16 = 10, "METER_MOD_FAILED: no more meters available.";
    OFPMMFC_OUT_OF_BANDS: u16 = 11, "METER_MOD_FAILED: the maximum number of properties for a meter has been exceeded.";
    OFPTFFC_BAD_LEN: u16 = 3, "TABLE_FEATURES_FAILED: length problem in properties.";
}
