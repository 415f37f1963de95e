//! The real XDP program, loaded into the kernel with private maps, driven by
//! BPF_PROG_TEST_RUN: a frame in, the verdict and the frame out.
use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::maps::{Counters, Settings, Verdict};
use lb_userspace::{
    config::{Mode, Protocol},
    dataplane::{Dataplane, LoadOptions},
    services::{self, BackendEntry, BackendState, Limits, ServiceEntry},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub struct Harness {
    pub dataplane: Dataplane,
    pub services: Vec<ServiceEntry>,
    next_backend_id: u32,
}

/// A backend for [`Harness::add_service`]: address, port, MAC, weight.
pub struct BackendSpec {
    pub name: &'static str,
    pub addr: IpAddr,
    pub port: u16,
    pub mac: [u8; 6],
    pub weight: u32,
}

/// The MACs the kernel tests give web1 and web2.
pub const WEB1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
pub const WEB2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];

/// Backends web1 and web2 at these addresses and `port`, weight 1, with `WEB1_MAC`/`WEB2_MAC`.
pub fn two_web_backends(web1: IpAddr, web2: IpAddr, port: u16) -> [BackendSpec; 2] {
    [
        BackendSpec {
            name: "web1",
            addr: web1,
            port,
            mac: WEB1_MAC,
            weight: 1,
        },
        BackendSpec {
            name: "web2",
            addr: web2,
            port,
            mac: WEB2_MAC,
            weight: 1,
        },
    ]
}

impl Harness {
    #[track_caller]
    pub fn new() -> Self {
        Self::with_options(&LoadOptions::default())
    }

    #[track_caller]
    pub fn with_options(options: &LoadOptions) -> Self {
        crate::assert_root("loading the XDP program for BPF_PROG_TEST_RUN");
        let dataplane =
            Dataplane::load(options).unwrap_or_else(|e| panic!("loading the XDP program: {e:#}"));
        Harness {
            dataplane,
            services: Vec::new(),
            next_backend_id: 1,
        }
    }

    #[track_caller]
    pub fn set_nat_ports(&mut self, min: u16, max: u16) {
        self.change_settings(|s| {
            s.nat_port_min = min;
            s.nat_port_max = max;
        });
    }

    /// The MAC address of the program's interface (`Firewall::own_mac`), as the agent sets it
    /// when it attaches: unicast frames to any other MAC are then never balanced.
    #[track_caller]
    pub fn set_own_mac(&mut self, mac: [u8; 6]) {
        let mut live = self
            .dataplane
            .firewall()
            .unwrap_or_else(|e| panic!("{e:#}"));
        live.own_mac = mac;
        self.dataplane
            .set_firewall(&live)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Stops the data path's flow clock at `now` (seconds; not 0, which means the kernel's).
    #[track_caller]
    pub fn set_clock(&mut self, now: u32) {
        assert_ne!(now, 0, "0 gives the flow clock back to the kernel");
        self.change_settings(|s| s.test_clock = now);
    }

    #[track_caller]
    pub fn change_settings(&mut self, change: impl FnOnce(&mut Settings)) {
        let mut settings = self
            .dataplane
            .settings()
            .unwrap_or_else(|e| panic!("{e:#}"));
        change(&mut settings);
        self.dataplane
            .set_settings(&settings)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Gives service `index` these NAT source addresses, written as the agent writes them.
    #[track_caller]
    pub fn set_snat(&mut self, index: usize, addrs: &[IpAddr]) {
        let service = &mut self.services[index];
        service.snat = addrs.to_vec();
        services::program_service(&mut self.dataplane, service).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Adds a service and returns its index in `self.services`.
    #[track_caller]
    pub fn add_service(
        &mut self,
        name: &str,
        vip: (IpAddr, u16),
        protocol: Protocol,
        mode: Mode,
        snat: Option<IpAddr>,
        backends: &[BackendSpec],
    ) -> usize {
        let id = self.services.len() as u32;
        let backends = backends
            .iter()
            .map(|b| {
                let id = self.next_backend_id;
                self.next_backend_id += 1;
                BackendEntry {
                    name: b.name.to_string(),
                    id,
                    generation: 1,
                    addr: b.addr,
                    port: b.port,
                    weight: b.weight,
                    state: BackendState::Active,
                    mac: Some(b.mac),
                }
            })
            .collect();
        let mut service = ServiceEntry {
            name: name.to_string(),
            id,
            key: services::service_key(vip.0, vip.1, protocol),
            mode,
            snat: snat.into_iter().collect(),
            active_table: 0,
            backends,
            limits: Limits::default(),
        };
        services::program_service(&mut self.dataplane, &mut service)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.services.push(service);
        self.services.len() - 1
    }

    /// Changes a backend's state and reprograms its service.
    #[track_caller]
    pub fn set_backend_state(&mut self, service: usize, backend: &str, state: BackendState) {
        let entry = &mut self.services[service];
        let b = entry
            .backends
            .iter_mut()
            .find(|b| b.name == backend)
            .unwrap_or_else(|| panic!("no backend {backend}"));
        b.state = state;
        services::program_service(&mut self.dataplane, entry).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Runs one frame through the program: (XDP action, output frame).
    #[track_caller]
    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program = self.dataplane.program().unwrap_or_else(|e| panic!("{e:#}"));
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    pub fn backend_counters(&self, service: usize, backend: &str) -> Counters {
        let id = self.services[service]
            .backends
            .iter()
            .find(|b| b.name == backend)
            .map(|b| b.id)
            .unwrap_or(0);
        self.dataplane
            .backend_counters(id)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn service_counters(&self, service: usize) -> Counters {
        self.dataplane
            .service_counters(self.services[service].id)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn verdict_count(&self, verdict: Verdict) -> u64 {
        let all = self
            .dataplane
            .verdict_counters()
            .unwrap_or_else(|e| panic!("{e:#}"));
        all.iter()
            .find(|(v, _)| *v == verdict)
            .map_or(0, |(_, c)| c.packets)
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// A harness programmed from a whole agent config (services, firewall), the way `lb run` does,
/// with backend MACs given instead of resolved.
pub struct ConfigHarness {
    pub harness: Harness,
    pub table: lb_userspace::services::ServiceTable,
    pub rules: lb_userspace::firewall::RuleSet,
}

impl ConfigHarness {
    /// `host_addrs`: the load balancer's own addresses (the VIPs are added, as the agent does).
    #[track_caller]
    pub fn new(toml: &str, macs: &[(IpAddr, [u8; 6])], host_addrs: &[IpAddr]) -> Self {
        let config = lb_userspace::config::parse(std::path::Path::new("test.toml"), toml)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut harness = Harness::new();
        let mut table = lb_userspace::services::ServiceTable::from_config(&config, &[], &[])
            .unwrap_or_else(|e| panic!("{e:#}"));
        for service in &mut table.services {
            for backend in &mut service.backends {
                backend.mac = macs
                    .iter()
                    .find(|(a, _)| *a == backend.addr)
                    .map(|(_, m)| *m);
            }
            services::program_service(&mut harness.dataplane, service)
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        let rules = lb_userspace::firewall::RuleSet::from_config(&config, &table, (32768, 60999));
        let vips: Vec<IpAddr> = config.services.iter().map(|s| s.vip).collect();
        let mut hosts = host_addrs.to_vec();
        hosts.extend(&vips);
        lb_userspace::firewall::apply(&mut harness.dataplane, &rules, &hosts, &vips)
            .unwrap_or_else(|e| panic!("{e:#}"));
        ConfigHarness {
            harness,
            table,
            rules,
        }
    }

    /// The MAC address of the program's interface, as the agent sets it when it attaches.
    #[track_caller]
    pub fn set_own_mac(&mut self, mac: [u8; 6]) {
        self.rules.settings.own_mac = mac;
        self.harness.set_own_mac(mac);
    }

    /// Counters of the rule named `name`.
    #[track_caller]
    pub fn rule(&self, name: &str) -> lb_common::maps::RuleCounters {
        let rule = self
            .rules
            .rules
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no rule {name}"));
        self.harness
            .dataplane
            .rule_counters(rule.id)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.harness.run(frame)
    }

    pub fn verdict_count(&self, verdict: Verdict) -> u64 {
        self.harness.verdict_count(verdict)
    }
}
