//! proptest strategies for every message type (shared by the test files).
#![allow(dead_code)]

use daolinet_openflow::oxm::BASIC_FIELDS;
use daolinet_openflow::*;
use proptest::collection::vec;
use proptest::prelude::*;

pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// Bytes whose length is `rem` modulo 8.
pub fn bytes_mod8(max_words: usize, rem: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max_words).prop_flat_map(move |w| vec(any::<u8>(), w * 8 + rem))
}

pub fn name(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9_.-]{{0,{max}}}")).unwrap()
}

pub fn mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

pub fn basic_oxm() -> impl Strategy<Value = OxmField> {
    (0..BASIC_FIELDS.len(), any::<bool>()).prop_flat_map(|(i, hm)| {
        let len = BASIC_FIELDS[i].len * if hm { 2 } else { 1 };
        vec(any::<u8>(), len).prop_map(move |p| {
            OxmField::from_parts(OFPXMC_OPENFLOW_BASIC, i as u8, hm, &p).unwrap()
        })
    })
}

pub fn raw_oxm() -> impl Strategy<Value = OxmField> {
    prop_oneof![
        (
            prop_oneof![Just(0u16), Just(1u16), Just(0xffffu16), 2u16..0x7fff],
            0u8..128
        ),
        (Just(OFPXMC_OPENFLOW_BASIC), 40u8..128),
    ]
    .prop_flat_map(|(class, field)| {
        (any::<bool>(), bytes(24)).prop_map(move |(hm, p)| {
            OxmField::Raw(RawOxm {
                class,
                field,
                has_mask: hm,
                payload: p,
            })
        })
    })
}

pub fn oxm() -> impl Strategy<Value = OxmField> {
    prop_oneof![4 => basic_oxm(), 1 => raw_oxm()]
}

pub fn a_match() -> impl Strategy<Value = Match> {
    vec(oxm(), 0..6).prop_map(|fields| Match { fields })
}

const KNOWN_ACTIONS: &[u16] = &[
    0, 11, 12, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
];

pub fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(port, max_len)| Action::Output { port, max_len }),
        Just(Action::CopyTtlOut),
        Just(Action::CopyTtlIn),
        any::<u8>().prop_map(Action::SetMplsTtl),
        Just(Action::DecMplsTtl),
        any::<u16>().prop_map(Action::PushVlan),
        Just(Action::PopVlan),
        any::<u16>().prop_map(Action::PushMpls),
        any::<u16>().prop_map(Action::PopMpls),
        any::<u32>().prop_map(Action::SetQueue),
        any::<u32>().prop_map(Action::Group),
        any::<u8>().prop_map(Action::SetNwTtl),
        Just(Action::DecNwTtl),
        oxm().prop_map(Action::SetField),
        any::<u16>().prop_map(Action::PushPbb),
        Just(Action::PopPbb),
        (any::<u32>(), bytes_mod8(3, 0))
            .prop_map(|(experimenter, data)| Action::Experimenter { experimenter, data }),
        (
            any::<u16>().prop_filter("unknown", |t| !KNOWN_ACTIONS.contains(t) && *t != 0xffff),
            bytes_mod8(3, 4)
        )
            .prop_map(|(action_type, data)| Action::Unknown { action_type, data }),
    ]
}

pub fn actions() -> impl Strategy<Value = Vec<Action>> {
    vec(action(), 0..5)
}

pub fn instruction() -> impl Strategy<Value = Instruction> {
    prop_oneof![
        any::<u8>().prop_map(Instruction::GotoTable),
        (any::<u64>(), any::<u64>())
            .prop_map(|(metadata, mask)| Instruction::WriteMetadata { metadata, mask }),
        actions().prop_map(Instruction::WriteActions),
        actions().prop_map(Instruction::ApplyActions),
        Just(Instruction::ClearActions),
        any::<u32>().prop_map(Instruction::Meter),
        (any::<u32>(), bytes_mod8(2, 0))
            .prop_map(|(experimenter, data)| Instruction::Experimenter { experimenter, data }),
        (7u16..0xffff, bytes_mod8(2, 4)).prop_map(|(instruction_type, data)| {
            Instruction::Unknown {
                instruction_type,
                data,
            }
        }),
    ]
}

pub fn instructions() -> impl Strategy<Value = Vec<Instruction>> {
    vec(instruction(), 0..4)
}

pub fn port() -> impl Strategy<Value = Port> {
    (any::<u32>(), mac(), name(15), any::<[u32; 8]>()).prop_map(|(port_no, hw_addr, name, v)| {
        Port {
            port_no,
            hw_addr,
            name,
            config: v[0],
            state: v[1],
            curr: v[2],
            advertised: v[3],
            supported: v[4],
            peer: v[5],
            curr_speed: v[6],
            max_speed: v[7],
        }
    })
}

pub fn flow_mod() -> impl Strategy<Value = FlowMod> {
    (
        any::<(u64, u64, u8, u8, u16, u16, u16)>(),
        any::<(u32, u32, u32, u16)>(),
        a_match(),
        instructions(),
    )
        .prop_map(
            |(
                (cookie, cookie_mask, table_id, command, idle_timeout, hard_timeout, priority),
                (buffer_id, out_port, out_group, flags),
                match_,
                instructions,
            )| FlowMod {
                cookie,
                cookie_mask,
                table_id,
                command,
                idle_timeout,
                hard_timeout,
                priority,
                buffer_id,
                out_port,
                out_group,
                flags,
                match_,
                instructions,
            },
        )
}

pub fn bucket() -> impl Strategy<Value = Bucket> {
    (any::<(u16, u32, u32)>(), actions()).prop_map(
        |((weight, watch_port, watch_group), actions)| Bucket {
            weight,
            watch_port,
            watch_group,
            actions,
        },
    )
}

pub fn band() -> impl Strategy<Value = MeterBand> {
    prop_oneof![
        any::<(u32, u32)>().prop_map(|(rate, burst_size)| MeterBand::Drop { rate, burst_size }),
        any::<(u32, u32, u8)>().prop_map(|(rate, burst_size, prec_level)| {
            MeterBand::DscpRemark {
                rate,
                burst_size,
                prec_level,
            }
        }),
        (any::<(u32, u32, u32)>(), bytes_mod8(2, 0)).prop_map(
            |((rate, burst_size, experimenter), data)| MeterBand::Experimenter {
                rate,
                burst_size,
                experimenter,
                data
            }
        ),
        (
            3u16..0xffff,
            (1usize..3).prop_flat_map(|w| vec(any::<u8>(), w * 8 + 4))
        )
            .prop_map(|(band_type, data)| MeterBand::Unknown { band_type, data }),
    ]
}

pub fn flow_stats_request() -> impl Strategy<Value = FlowStatsRequest> {
    (any::<(u8, u32, u32, u64, u64)>(), a_match()).prop_map(
        |((table_id, out_port, out_group, cookie, cookie_mask), match_)| FlowStatsRequest {
            table_id,
            out_port,
            out_group,
            cookie,
            cookie_mask,
            match_,
        },
    )
}

pub fn table_features() -> impl Strategy<Value = TableFeatures> {
    (
        any::<(u8, u64, u64, u32, u32)>(),
        name(31),
        vec(
            (any::<u16>(), bytes(20))
                .prop_map(|(prop_type, data)| TableFeatureProp { prop_type, data }),
            0..4,
        ),
    )
        .prop_map(
            |(
                (table_id, metadata_match, metadata_write, config, max_entries),
                name,
                properties,
            )| {
                TableFeatures {
                    table_id,
                    name,
                    metadata_match,
                    metadata_write,
                    config,
                    max_entries,
                    properties,
                }
            },
        )
}

pub fn counters() -> impl Strategy<Value = Vec<Counters>> {
    vec(
        any::<(u64, u64)>().prop_map(|(packet_count, byte_count)| Counters {
            packet_count,
            byte_count,
        }),
        0..3,
    )
}

pub fn mp_request() -> impl Strategy<Value = MultipartRequest> {
    use MultipartRequestBody as B;
    let body = prop_oneof![
        Just(B::Desc),
        flow_stats_request().prop_map(B::Flow),
        flow_stats_request().prop_map(B::Aggregate),
        Just(B::Table),
        any::<u32>().prop_map(B::PortStats),
        any::<(u32, u32)>().prop_map(|(port_no, queue_id)| B::Queue { port_no, queue_id }),
        any::<u32>().prop_map(B::Group),
        Just(B::GroupDesc),
        Just(B::GroupFeatures),
        any::<u32>().prop_map(B::Meter),
        any::<u32>().prop_map(B::MeterConfig),
        Just(B::MeterFeatures),
        vec(table_features(), 0..3).prop_map(B::TableFeatures),
        Just(B::PortDesc),
        (any::<(u32, u32)>(), bytes(16)).prop_map(|((experimenter, exp_type), data)| {
            B::Experimenter(ExperimenterMsg {
                experimenter,
                exp_type,
                data,
            })
        }),
        (14u16..0xffff, bytes(16)).prop_map(|(mp_type, data)| B::Unknown { mp_type, data }),
    ];
    (any::<u16>(), body).prop_map(|(flags, body)| MultipartRequest { flags, body })
}

pub fn mp_reply() -> impl Strategy<Value = MultipartReply> {
    use MultipartReplyBody as B;
    let flow_stats = (
        any::<(u8, u32, u32, u16, u16, u16, u16)>(),
        any::<(u64, u64, u64)>(),
        a_match(),
        instructions(),
    )
        .prop_map(
            |(
                (
                    table_id,
                    duration_sec,
                    duration_nsec,
                    priority,
                    idle_timeout,
                    hard_timeout,
                    flags,
                ),
                (cookie, packet_count, byte_count),
                match_,
                instructions,
            )| FlowStats {
                table_id,
                duration_sec,
                duration_nsec,
                priority,
                idle_timeout,
                hard_timeout,
                flags,
                cookie,
                packet_count,
                byte_count,
                match_,
                instructions,
            },
        );
    let port_stats = (any::<(u32, u32, u32)>(), any::<[u64; 12]>()).prop_map(
        |((port_no, duration_sec, duration_nsec), c)| PortStats {
            port_no,
            rx_packets: c[0],
            tx_packets: c[1],
            rx_bytes: c[2],
            tx_bytes: c[3],
            rx_dropped: c[4],
            tx_dropped: c[5],
            rx_errors: c[6],
            tx_errors: c[7],
            rx_frame_err: c[8],
            rx_over_err: c[9],
            rx_crc_err: c[10],
            collisions: c[11],
            duration_sec,
            duration_nsec,
        },
    );
    let body = prop_oneof![
        (name(40), name(40), name(40), name(31), name(40)).prop_map(
            |(mfr_desc, hw_desc, sw_desc, serial_num, dp_desc)| B::Desc(Desc {
                mfr_desc,
                hw_desc,
                sw_desc,
                serial_num,
                dp_desc
            })
        ),
        vec(flow_stats, 0..3).prop_map(B::Flow),
        any::<(u64, u64, u32)>().prop_map(|(packet_count, byte_count, flow_count)| {
            B::Aggregate(AggregateStats {
                packet_count,
                byte_count,
                flow_count,
            })
        }),
        vec(
            any::<(u8, u32, u64, u64)>().prop_map(
                |(table_id, active_count, lookup_count, matched_count)| TableStats {
                    table_id,
                    active_count,
                    lookup_count,
                    matched_count
                }
            ),
            0..4
        )
        .prop_map(B::Table),
        vec(port_stats, 0..3).prop_map(B::PortStats),
        vec(
            any::<(u32, u32, u64, u64, u64, u32, u32)>().prop_map(|(a, b, c, d, e, f, g)| {
                QueueStats {
                    port_no: a,
                    queue_id: b,
                    tx_bytes: c,
                    tx_packets: d,
                    tx_errors: e,
                    duration_sec: f,
                    duration_nsec: g,
                }
            }),
            0..3
        )
        .prop_map(B::Queue),
        vec(
            (any::<(u32, u32, u64, u64, u32, u32)>(), counters()).prop_map(
                |((group_id, ref_count, packet_count, byte_count, s, ns), bucket_stats)| {
                    GroupStats {
                        group_id,
                        ref_count,
                        packet_count,
                        byte_count,
                        duration_sec: s,
                        duration_nsec: ns,
                        bucket_stats,
                    }
                }
            ),
            0..3
        )
        .prop_map(B::Group),
        vec(
            (any::<(u8, u32)>(), vec(bucket(), 0..3)).prop_map(
                |((group_type, group_id), buckets)| GroupDesc {
                    group_type,
                    group_id,
                    buckets
                }
            ),
            0..3
        )
        .prop_map(B::GroupDesc),
        any::<(u32, u32, [u32; 4], [u32; 4])>().prop_map(
            |(types, capabilities, max_groups, actions)| B::GroupFeatures(GroupFeatures {
                types,
                capabilities,
                max_groups,
                actions
            })
        ),
        vec(
            (any::<(u32, u32, u64, u64, u32, u32)>(), counters()).prop_map(
                |((meter_id, flow_count, p, b, s, ns), band_stats)| MeterStats {
                    meter_id,
                    flow_count,
                    packet_in_count: p,
                    byte_in_count: b,
                    duration_sec: s,
                    duration_nsec: ns,
                    band_stats,
                }
            ),
            0..3
        )
        .prop_map(B::Meter),
        vec(
            (any::<(u16, u32)>(), vec(band(), 0..3)).prop_map(|((flags, meter_id), bands)| {
                MeterConfig {
                    flags,
                    meter_id,
                    bands,
                }
            }),
            0..3
        )
        .prop_map(B::MeterConfig),
        any::<(u32, u32, u32, u8, u8)>().prop_map(
            |(max_meter, band_types, capabilities, max_bands, max_color)| {
                B::MeterFeatures(MeterFeatures {
                    max_meter,
                    band_types,
                    capabilities,
                    max_bands,
                    max_color,
                })
            }
        ),
        vec(table_features(), 0..3).prop_map(B::TableFeatures),
        vec(port(), 0..3).prop_map(B::PortDesc),
        (any::<(u32, u32)>(), bytes(16)).prop_map(|((experimenter, exp_type), data)| {
            B::Experimenter(ExperimenterMsg {
                experimenter,
                exp_type,
                data,
            })
        }),
        (14u16..0xffff, bytes(16)).prop_map(|(mp_type, data)| B::Unknown { mp_type, data }),
    ];
    (any::<u16>(), body).prop_map(|(flags, body)| MultipartReply { flags, body })
}

pub fn message() -> impl Strategy<Value = Message> {
    use Message as M;
    let hello = (
        any::<u8>(),
        vec(
            prop_oneof![
                vec(any::<u32>(), 0..3).prop_map(HelloElement::VersionBitmap),
                (2u16..0xffff, bytes(12)).prop_map(|(element_type, data)| {
                    HelloElement::Unknown { element_type, data }
                }),
            ],
            0..3,
        ),
    )
        .prop_map(|(version, elements)| M::Hello(Hello { version, elements }));
    let error = prop_oneof![
        (0u16..0xffff, any::<u16>(), bytes(70)).prop_map(|(err_type, code, data)| {
            ErrorMsg::Standard {
                err_type,
                code,
                data,
            }
        }),
        (any::<u16>(), any::<u32>(), bytes(20)).prop_map(|(exp_type, experimenter, data)| {
            ErrorMsg::Experimenter {
                exp_type,
                experimenter,
                data,
            }
        }),
    ]
    .prop_map(M::Error);
    let features = any::<(u64, u32, u8, u8, u32, u32)>().prop_map(|(a, b, c, d, e, f)| {
        M::FeaturesReply(SwitchFeatures {
            datapath_id: a,
            n_buffers: b,
            n_tables: c,
            auxiliary_id: d,
            capabilities: e,
            reserved: f,
        })
    });
    let config = any::<(u16, u16)>().prop_map(|(flags, miss_send_len)| SwitchConfig {
        flags,
        miss_send_len,
    });
    let packet_in = (any::<(u32, u16, u8, u8, u64)>(), a_match(), bytes(100)).prop_map(
        |((buffer_id, total_len, reason, table_id, cookie), match_, data)| {
            M::PacketIn(PacketIn {
                buffer_id,
                total_len,
                reason,
                table_id,
                cookie,
                match_,
                data,
            })
        },
    );
    let flow_removed = (
        any::<(u64, u16, u8, u8, u32, u32, u16, u16, u64, u64)>(),
        a_match(),
    )
        .prop_map(|((a, b, c, d, e, f, g, h, i, j), match_)| {
            M::FlowRemoved(FlowRemoved {
                cookie: a,
                priority: b,
                reason: c,
                table_id: d,
                duration_sec: e,
                duration_nsec: f,
                idle_timeout: g,
                hard_timeout: h,
                packet_count: i,
                byte_count: j,
                match_,
            })
        });
    let async_cfg = any::<([u32; 2], [u32; 2], [u32; 2])>().prop_map(|(a, b, c)| AsyncConfig {
        packet_in_mask: a,
        port_status_mask: b,
        flow_removed_mask: c,
    });
    let role = any::<(u32, u64)>().prop_map(|(role, generation_id)| RoleMsg {
        role,
        generation_id,
    });
    prop_oneof![
        hello,
        error,
        bytes(40).prop_map(M::EchoRequest),
        bytes(40).prop_map(M::EchoReply),
        (any::<(u32, u32)>(), bytes(30)).prop_map(|((experimenter, exp_type), data)| {
            M::Experimenter(ExperimenterMsg {
                experimenter,
                exp_type,
                data,
            })
        }),
        Just(M::FeaturesRequest),
        features,
        Just(M::GetConfigRequest),
        config.clone().prop_map(M::GetConfigReply),
        config.prop_map(M::SetConfig),
        packet_in,
        flow_removed,
        (any::<u8>(), port()).prop_map(|(reason, desc)| M::PortStatus(PortStatus { reason, desc })),
        (any::<(u32, u32)>(), actions(), bytes(100)).prop_map(
            |((buffer_id, in_port), actions, data)| M::PacketOut(PacketOut {
                buffer_id,
                in_port,
                actions,
                data
            })
        ),
        flow_mod().prop_map(M::FlowMod),
        (any::<(u16, u8, u32)>(), vec(bucket(), 0..3)).prop_map(
            |((command, group_type, group_id), buckets)| M::GroupMod(GroupMod {
                command,
                group_type,
                group_id,
                buckets
            })
        ),
        (any::<(u32, u32, u32, u32)>(), mac()).prop_map(
            |((port_no, config, mask, advertise), hw_addr)| M::PortMod(PortMod {
                port_no,
                hw_addr,
                config,
                mask,
                advertise
            })
        ),
        any::<(u8, u32)>()
            .prop_map(|(table_id, config)| M::TableMod(TableMod { table_id, config })),
        mp_request().prop_map(M::MultipartRequest),
        mp_reply().prop_map(M::MultipartReply),
        Just(M::BarrierRequest),
        Just(M::BarrierReply),
        any::<u32>().prop_map(M::QueueGetConfigRequest),
        (any::<u32>(), bytes(24)).prop_map(|(port, queues)| {
            M::QueueGetConfigReply(QueueGetConfigReply { port, queues })
        }),
        role.clone().prop_map(M::RoleRequest),
        role.prop_map(M::RoleReply),
        Just(M::GetAsyncRequest),
        async_cfg.clone().prop_map(M::GetAsyncReply),
        async_cfg.prop_map(M::SetAsync),
        (any::<(u16, u16, u32)>(), vec(band(), 0..3)).prop_map(
            |((command, flags, meter_id), bands)| M::MeterMod(MeterMod {
                command,
                flags,
                meter_id,
                bands
            })
        ),
    ]
}
