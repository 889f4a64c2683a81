//! Simulated GPUs, for machines without any: `4xH100-80GB,nvlink=0-1,2-3` is four H100s of
//! 80 GB with NVLinks between 0 and 1 and between 2 and 3; groups join with `+`
//! (`2xA100-40GB+2xH100-80GB`). They feed the same interface NVML feeds, and their figures
//! follow what kiln placed on them: a whole-GPU task drives utilisation to 95 %, shares in
//! proportion to their memory; temperature and power follow utilisation.

use kiln_api::pb;

use super::{GpuSource, Load};

pub struct Simulated {
    devices: Vec<pb::GpuDevice>,
    /// Board power limit per GPU, watts.
    tdp: Vec<f64>,
}

const IDLE_WATTS: f64 = 60.0;
const IDLE_CELSIUS: f64 = 32.0;

impl Simulated {
    pub fn parse(node_id: &str, spec: &str) -> Result<Simulated, String> {
        let bad = |why: &str| {
            format!("--simulate-gpus {spec:?}: {why} (example: 4xH100-80GB,nvlink=0-1,2-3)")
        };
        let (groups, links) = match spec.split_once(",nvlink=") {
            Some((g, l)) => (g, Some(l)),
            None => (spec, None),
        };
        let mut devices = Vec::new();
        let mut tdp = Vec::new();
        for group in groups.split('+') {
            let (count, kind) = group
                .split_once('x')
                .ok_or_else(|| bad("expected COUNTxMODEL-MEMORYGB"))?;
            let count: u32 = count
                .trim()
                .parse()
                .map_err(|_| bad("the count is not a number"))?;
            let (model, memory) = kind
                .rsplit_once('-')
                .ok_or_else(|| bad("expected MODEL-MEMORYGB"))?;
            let gb: u64 = memory
                .strip_suffix("GB")
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| bad("memory must be like 80GB"))?;
            if count == 0 || gb == 0 || model.is_empty() {
                return Err(bad("count, model and memory must be non-empty"));
            }
            for _ in 0..count {
                let index = devices.len() as u32;
                devices.push(pb::GpuDevice {
                    index,
                    uuid: format!("GPU-SIMULATED-{node_id}-{index}"),
                    model: format!("NVIDIA {model} {gb}GB (simulated)"),
                    memory_bytes: gb * 1_000_000_000,
                    nvlink_peers: Vec::new(),
                    driver_version: "simulated".into(),
                    simulated: true,
                });
                tdp.push(if model.contains("H100") || model.contains("H200") {
                    700.0
                } else if model.contains("A100") {
                    400.0
                } else {
                    300.0
                });
            }
        }
        for pair in links.into_iter().flat_map(|l| l.split(',')) {
            let (a, b) = pair
                .split_once('-')
                .ok_or_else(|| bad("nvlink pairs look like 0-1"))?;
            let (a, b): (u32, u32) = (
                a.parse().map_err(|_| bad("bad nvlink index"))?,
                b.parse().map_err(|_| bad("bad nvlink index"))?,
            );
            if a == b || a as usize >= devices.len() || b as usize >= devices.len() {
                return Err(bad("nvlink indices must name two different GPUs"));
            }
            devices[a as usize].nvlink_peers.push(b);
            devices[b as usize].nvlink_peers.push(a);
        }
        Ok(Simulated { devices, tdp })
    }
}

impl GpuSource for Simulated {
    fn devices(&self) -> Vec<pb::GpuDevice> {
        self.devices.clone()
    }

    fn stats(&self, load: &[Load]) -> Vec<pb::GpuStats> {
        self.devices
            .iter()
            .zip(&self.tdp)
            .map(|(d, tdp)| {
                let l = load
                    .iter()
                    .find(|l| l.index == d.index)
                    .cloned()
                    .unwrap_or_default();
                let share = l.shared_bytes as f64 / d.memory_bytes as f64;
                let util = if l.whole > 0 {
                    95.0
                } else {
                    (share * 100.0).min(100.0)
                };
                let used = if l.whole > 0 {
                    (d.memory_bytes as f64 * 0.9) as u64
                } else {
                    l.shared_bytes.min(d.memory_bytes)
                };
                pb::GpuStats {
                    index: d.index,
                    utilization_percent: util,
                    memory_utilization_percent: util * 0.6,
                    memory_used_bytes: used,
                    temperature_celsius: IDLE_CELSIUS + 0.45 * util,
                    power_watts: IDLE_WATTS + (tdp - IDLE_WATTS) * util / 100.0,
                    process_ids: l.pids,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_and_nvlinks() {
        let s = Simulated::parse("n1", "2xA100-40GB+2xH100-80GB,nvlink=0-1,2-3").unwrap();
        let d = s.devices();
        assert_eq!(d.len(), 4);
        assert_eq!(d[0].model, "NVIDIA A100 40GB (simulated)");
        assert_eq!(d[3].memory_bytes, 80_000_000_000);
        assert_eq!(d[2].nvlink_peers, vec![3]);
        assert!(d.iter().all(|g| g.simulated));
    }

    #[test]
    fn bad_specs_say_why() {
        for spec in [
            "4H100-80GB",
            "0xH100-80GB",
            "4xH100-80",
            "4xH100-80GB,nvlink=0-9",
            "2xH100-80GB,nvlink=1-1",
        ] {
            let e = Simulated::parse("n", spec).err().unwrap_or_default();
            assert!(e.starts_with("--simulate-gpus"), "{spec}: {e}");
        }
    }

    #[test]
    fn figures_follow_the_load() {
        let s = Simulated::parse("n", "2xH100-80GB").unwrap();
        let idle = s.stats(&[]);
        assert_eq!(idle[0].utilization_percent, 0.0);
        assert_eq!(idle[0].power_watts, IDLE_WATTS);
        let busy = s.stats(&[
            Load {
                index: 0,
                whole: 1,
                ..Default::default()
            },
            Load {
                index: 1,
                shared_bytes: 40_000_000_000,
                ..Default::default()
            },
        ]);
        assert_eq!(busy[0].utilization_percent, 95.0);
        assert_eq!(busy[1].utilization_percent, 50.0);
        assert_eq!(busy[1].memory_used_bytes, 40_000_000_000);
        assert!(busy[0].temperature_celsius > idle[0].temperature_celsius);
        assert!(busy[0].power_watts > busy[1].power_watts);
    }
}
