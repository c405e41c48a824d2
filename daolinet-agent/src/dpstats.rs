//! Reading what the datapath observed, for the metrics, the status and the
//! drop events: drops by port and reason, whether the programs are still
//! attached, and the sampled drops ([`daolinet_common::DropSample`]) with
//! their sampling rate. Read on demand (a scrape, a status request, the
//! sample ring becoming readable): nothing here runs per packet.

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType};
use daolinet_common::drop_sample::MAX_SAMPLE_RATE;
use daolinet_common::{
    maps as names, DropReason, DropSample, PortInfo, SampleConfig, DROP_SAMPLE_CAP, DROP_SLOTS,
    PORT_FLAG_ANTI_SPOOF,
};

use crate::datapath::Datapath;

/// Drops of the port in `slot` by reason (every reason but
/// `unknown_ingress`), summed over CPUs.
pub fn port_drops(dp: &mut Datapath, slot: u32) -> Result<Vec<(DropReason, u64)>> {
    let map = dp
        .ebpf_mut()
        .map_mut(names::PORT_DROPS)
        .ok_or_else(|| anyhow!("map {} missing from the BPF object", names::PORT_DROPS))?;
    let m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(map)?;
    let mut out = Vec::with_capacity(DropReason::ALL.len());
    for r in DropReason::ALL {
        if r == DropReason::UnknownIngress {
            continue;
        }
        let n = m
            .get(&(slot * DROP_SLOTS + r as u32), 0)?
            .iter()
            .sum::<u64>();
        out.push((r, n));
    }
    Ok(out)
}

/// The port record the datapath holds for OpenFlow port `ofport`.
pub fn port_info(dp: &mut Datapath, ofport: u32) -> Result<Option<PortInfo>> {
    let map = dp
        .ebpf_mut()
        .map_mut(names::OFPORTS)
        .ok_or_else(|| anyhow!("map {} missing from the BPF object", names::OFPORTS))?;
    let m: HashMap<&mut MapData, u32, PortInfo> = HashMap::try_from(map)?;
    match m.get(&ofport, 0) {
        Ok(p) => Ok(Some(p)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// True when `info` has anti-spoofing on.
pub fn anti_spoof(info: &PortInfo) -> bool {
    info.flags & PORT_FLAG_ANTI_SPOOF != 0
}

/// Whether a DaoliNet program is attached with tcx to `iface` (ingress,
/// or egress for the LOCAL port): asks the kernel, so a program someone
/// detached behind the agent's back shows.
pub fn tcx_attached(iface: &str, egress: bool) -> Result<bool> {
    let at = if egress {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    };
    let (_, progs) = SchedClassifier::query_tcx(iface, at)
        .with_context(|| format!("querying the tcx programs of {iface}"))?;
    Ok(progs
        .iter()
        .any(|p| p.name_as_str() == Some(names::PROG_TC)))
}

/// Whether the datapath can take sampling configuration `cfg`: a rate
/// above [`MAX_SAMPLE_RATE`] would overflow its token bucket (and wrap to
/// fewer samples, not more), so it is refused with a message.
pub fn check_sampling(cfg: &SampleConfig) -> Result<()> {
    if cfg.rate > MAX_SAMPLE_RATE {
        bail!(
            "a drop sample rate of {} is too high: at most {MAX_SAMPLE_RATE} per second per CPU",
            cfg.rate
        );
    }
    Ok(())
}

/// Set the drop sampling rate (samples per second per CPU, and burst);
/// a rate of 0 turns sampling off. A rate [`check_sampling`] refuses
/// changes nothing.
pub fn set_sampling(dp: &mut Datapath, cfg: SampleConfig) -> Result<()> {
    check_sampling(&cfg)?;
    let map = dp
        .ebpf_mut()
        .map_mut(names::SAMPLE_CONFIG)
        .ok_or_else(|| anyhow!("map {} missing from the BPF object", names::SAMPLE_CONFIG))?;
    let mut m: Array<&mut MapData, SampleConfig> = Array::try_from(map)?;
    m.set(0, cfg, 0)?;
    Ok(())
}

/// Take the drop sample ring out of the datapath (kept mapped by the caller).
pub fn take_sample_ring(dp: &mut Datapath) -> Result<RingBuf<MapData>> {
    let map = dp
        .ebpf_mut()
        .take_map(names::DROP_SAMPLES)
        .ok_or_else(|| anyhow!("map {} missing from the BPF object", names::DROP_SAMPLES))?;
    Ok(RingBuf::try_from(map)?)
}

/// A sampled drop as the agent passes it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// `bpf_ktime_get_ns()` when dropped.
    pub timestamp_ns: u64,
    /// Ingress OpenFlow port.
    pub in_port: u32,
    /// Why.
    pub reason: Option<DropReason>,
    /// The raw reason (for a reason this agent does not know).
    pub reason_code: u32,
    /// Length on the wire.
    pub pkt_len: u32,
    /// The first bytes of the packet (its headers).
    pub data: Vec<u8>,
}

/// Parse one record of the drop sample ring.
pub fn parse_sample(record: &[u8]) -> Result<Dropped> {
    let size = size_of::<DropSample>();
    if record.len() < size {
        bail!("short drop sample: {} bytes", record.len());
    }
    let s: DropSample = bytemuck::pod_read_unaligned(&record[..size]);
    let cap = (s.cap_len as usize).min(DROP_SAMPLE_CAP);
    Ok(Dropped {
        timestamp_ns: s.timestamp_ns,
        in_port: s.in_port,
        reason: DropReason::ALL.get(s.reason as usize).copied(),
        reason_code: s.reason,
        pkt_len: s.pkt_len,
        data: s.data[..cap].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_and_short_ones_are_refused() {
        let mut s = DropSample {
            timestamp_ns: 5,
            ifindex: 3,
            in_port: 7,
            reason: DropReason::Spoofed as u32,
            pkt_len: 1500,
            cap_len: 4,
            _pad: 0,
            data: [0; DROP_SAMPLE_CAP],
        };
        s.data[..4].copy_from_slice(&[1, 2, 3, 4]);
        let d = parse_sample(bytemuck::bytes_of(&s)).unwrap();
        assert_eq!(d.in_port, 7);
        assert_eq!(d.reason, Some(DropReason::Spoofed));
        assert_eq!(d.data, [1, 2, 3, 4]);
        assert!(parse_sample(&bytemuck::bytes_of(&s)[..20]).is_err());
        // A cap_len beyond the record's data is clamped, an unknown reason kept raw.
        s.cap_len = 9999;
        s.reason = 77;
        let d = parse_sample(bytemuck::bytes_of(&s)).unwrap();
        assert_eq!(
            (d.data.len(), d.reason, d.reason_code),
            (DROP_SAMPLE_CAP, None, 77)
        );
    }

    /// `--drop-sample-rate` goes to the datapath's token bucket, whose
    /// refill overflowed (and wrapped) above MAX_SAMPLE_RATE.
    #[test]
    fn sampling_rates_the_datapath_cannot_take_are_refused() {
        let cfg = |rate| SampleConfig { rate, burst: 20 };
        assert!(check_sampling(&cfg(0)).is_ok());
        assert!(check_sampling(&cfg(MAX_SAMPLE_RATE)).is_ok());
        let e = check_sampling(&cfg(MAX_SAMPLE_RATE + 1)).unwrap_err();
        assert!(e.to_string().contains("at most 1000000"), "{e}");
        assert!(check_sampling(&cfg(u32::MAX)).is_err());
    }
}
