//! Real GPUs through NVML (nvml-wrapper). NVML is loaded at run time, so the agent runs on
//! machines without a driver; `open` then fails and the node has no GPUs.

use kiln_api::pb;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;

use super::{GpuSource, Load};

pub struct Nvml {
    nvml: nvml_wrapper::Nvml,
    devices: Vec<pb::GpuDevice>,
}

/// NVLink links per GPU that NVML may report (NVML_NVLINK_MAX_LINKS).
const MAX_LINKS: u32 = 18;

impl Nvml {
    pub fn open() -> Result<Nvml, String> {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| e.to_string())?;
        let driver_version = nvml.sys_driver_version().unwrap_or_default();
        let count = nvml.device_count().map_err(|e| e.to_string())?;
        let mut devices = Vec::new();
        let mut bus_ids = Vec::new();
        for index in 0..count {
            let d = nvml
                .device_by_index(index)
                .map_err(|e| format!("GPU {index}: {e}"))?;
            bus_ids.push(d.pci_info().map(|p| p.bus_id).unwrap_or_default());
            devices.push(pb::GpuDevice {
                index,
                uuid: d.uuid().unwrap_or_default(),
                model: d.name().unwrap_or_default(),
                memory_bytes: d.memory_info().map(|m| m.total).unwrap_or(0),
                nvlink_peers: Vec::new(),
                driver_version: driver_version.clone(),
                simulated: false,
            });
        }
        // NVLink peers: match each active link's remote PCI bus id to a local GPU.
        for index in 0..count {
            let Ok(d) = nvml.device_by_index(index) else {
                continue;
            };
            let mut peers = Vec::new();
            for link in 0..MAX_LINKS {
                let l = d.link_wrapper_for(link);
                if l.is_active().unwrap_or(false)
                    && let Ok(remote) = l.remote_pci_info()
                    && let Some(peer) = bus_ids.iter().position(|b| *b == remote.bus_id)
                    && !peers.contains(&(peer as u32))
                {
                    peers.push(peer as u32);
                }
            }
            devices[index as usize].nvlink_peers = peers;
        }
        Ok(Nvml { nvml, devices })
    }
}

impl GpuSource for Nvml {
    fn devices(&self) -> Vec<pb::GpuDevice> {
        self.devices.clone()
    }

    fn stats(&self, _: &[Load]) -> Vec<pb::GpuStats> {
        self.devices
            .iter()
            .filter_map(|dev| {
                let d = self.nvml.device_by_index(dev.index).ok()?;
                let util = d.utilization_rates().ok();
                let memory = d.memory_info().ok();
                Some(pb::GpuStats {
                    index: dev.index,
                    utilization_percent: util.as_ref().map_or(0.0, |u| u.gpu as f64),
                    memory_utilization_percent: util.as_ref().map_or(0.0, |u| u.memory as f64),
                    memory_used_bytes: memory.map_or(0, |m| m.used),
                    temperature_celsius: d
                        .temperature(TemperatureSensor::Gpu)
                        .map_or(0.0, |t| t as f64),
                    power_watts: d.power_usage().map_or(0.0, |mw| mw as f64 / 1000.0),
                    process_ids: d
                        .running_compute_processes()
                        .map(|p| p.iter().map(|p| p.pid).collect())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }
}
