//! Datacenters in network namespaces: each DC's processes run in a namespace of their own,
//! joined to the test's (root) namespace by a veth pair on a bridge, so that a partition is a
//! link taken down (`ip link set ... down`): the kernel drops the DC's traffic, with no proxy
//! in the path. Needs root and `ip` (iproute2); [`Netns::available`] says why not otherwise.
//!
//! ```text
//!   root namespace: bridge cb<id> 10.213.<n>.254/24 (the tests' clients, the fake cloud)
//!      |- veth cv<id><dc> <-> eth0 in namespace coopr<id><dc>: 10.213.<n>.<i+1>/24 (DC i)
//! ```
//!
//! Everything is removed when the value is dropped (also when a test fails): the namespaces,
//! the veth pairs with them, and the bridge.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

/// The namespaces, links and addresses of one deployment.
pub struct Netns {
    id: String,
    subnet: u8,
    dcs: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    /// `Err` says why namespaces cannot be used here (not root, no `ip`, no permission).
    pub fn available() -> Result<(), String> {
        let probe = format!("cooprprobe{}", std::process::id());
        ip(&["netns", "add", &probe])?;
        ip(&["netns", "del", &probe])
    }

    /// Creates a namespace per DC, linked to a new bridge.
    pub fn create(dcs: &[&str]) -> Netns {
        let id = format!("{:04x}", super::random_u64() & 0xffff);
        let subnet = 1 + (super::random_u64() % 250) as u8;
        let netns = Netns {
            id,
            subnet,
            dcs: dcs.iter().map(|d| d.to_string()).collect(),
        };
        netns
            .set_up()
            .unwrap_or_else(|e| panic!("network namespaces: {e}"));
        netns
    }

    fn bridge(&self) -> String {
        format!("cb{}", self.id)
    }

    fn host_link(&self, dc: &str) -> String {
        format!("cv{}{dc}", self.id)
    }

    /// The namespace of `dc`.
    pub fn namespace(&self, dc: &str) -> String {
        format!("coopr{}{dc}", self.id)
    }

    /// The bridge's address, where the DCs reach the root namespace (the fake cloud).
    pub fn host_address(&self) -> String {
        format!("10.213.{}.254", self.subnet)
    }

    /// `dc`'s address.
    pub fn address(&self, dc: &str) -> String {
        let i = self.dcs.iter().position(|d| d == dc).expect("known DC");
        format!("10.213.{}.{}", self.subnet, i + 1)
    }

    fn set_up(&self) -> Result<(), String> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.host_address()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for dc in &self.dcs {
            let ns = self.namespace(dc);
            let host = self.host_link(dc);
            let peer = format!("{host}p");
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &bridge])?;
            ip(&["link", "set", &host, "up"])?;
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", ns.as_str(), "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            exec(&["link", "set", "lo", "up"])?;
            exec(&["link", "set", &peer, "name", "eth0"])?;
            exec(&[
                "addr",
                "add",
                &format!("{}/24", self.address(dc)),
                "dev",
                "eth0",
            ])?;
            exec(&["link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Cuts `dc` off from every other DC and from the root namespace: its link goes down.
    pub fn cut_off(&self, dc: &str) {
        ip(&["link", "set", &self.host_link(dc), "down"]).expect("cut the link");
    }

    /// Brings every DC's link up again.
    pub fn heal(&self) {
        for dc in &self.dcs {
            ip(&["link", "set", &self.host_link(dc), "up"]).expect("heal the link");
        }
    }

    /// Address replacements for a deployment's configs: every port of DC `dc` (its nodes' API
    /// and internal ports) moves from `127.0.0.1` to the DC's address, and `fake_cloud_port`
    /// to the bridge's.
    pub fn replacements(
        &self,
        ports_by_dc: &BTreeMap<String, Vec<u16>>,
        fake_cloud_port: u16,
    ) -> BTreeMap<u16, String> {
        let mut replacements = BTreeMap::new();
        for (dc, ports) in ports_by_dc {
            for port in ports {
                replacements.insert(*port, format!("{}:{port}", self.address(dc)));
            }
        }
        replacements.insert(
            fake_cloud_port,
            format!("{}:{fake_cloud_port}", self.host_address()),
        );
        replacements
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for dc in &self.dcs {
            // Deleting a namespace deletes the veth end in it, and with it the pair.
            let _ = ip(&["netns", "del", &self.namespace(dc)]);
            let _ = ip(&["link", "del", &self.host_link(dc)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
