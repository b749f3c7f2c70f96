//! Network namespaces for tests that need a host of their own: a veth pair to the test's
//! namespace, removed on drop, and curl run inside it.

use std::process::Command;
use std::time::Duration;

/// The namespace and veth pair, removed on drop (also when the test fails).
pub struct Netns {
    pub name: String,
    pub host_if: String,
}

impl Netns {
    /// Names that resolve to `ip` inside the namespace (`ip netns exec` mounts
    /// `/etc/netns/NAME/hosts` over `/etc/hosts`).
    pub fn hosts(&self, ip: &str, names: &[&str]) -> std::io::Result<()> {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir)?;
        let mut text = String::from("127.0.0.1 localhost\n");
        for name in names {
            text.push_str(&format!("{ip} {name}\n"));
        }
        std::fs::write(format!("{dir}/hosts"), text)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // Usually gone with the namespace already.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates namespace `tg<tag><pid>` with `10.<net>.N.2/30`, linked to the host's
/// `10.<net>.N.1/30` (N from the pid). Returns it with the host's and the namespace's address.
pub fn create(tag: &str, net: u8) -> Result<(Netns, String, String), String> {
    let pid = std::process::id();
    let n = pid % 250 + 1;
    let ns = Netns {
        name: format!("tg{tag}{pid}"),
        host_if: format!("tg{tag}h{}", pid % 100_000),
    };
    let agent_if = format!("tg{tag}a{}", pid % 100_000);
    let (host_ip, agent_ip) = (format!("10.{net}.{n}.1"), format!("10.{net}.{n}.2"));
    ip(&["netns", "add", &ns.name])?;
    ip(&[
        "link",
        "add",
        &ns.host_if,
        "type",
        "veth",
        "peer",
        "name",
        &agent_if,
    ])?;
    ip(&["link", "set", &agent_if, "netns", &ns.name])?;
    ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &ns.host_if])?;
    ip(&["link", "set", &ns.host_if, "up"])?;
    ip(&[
        "-n",
        &ns.name,
        "addr",
        "add",
        &format!("{agent_ip}/30"),
        "dev",
        &agent_if,
    ])?;
    ip(&["-n", &ns.name, "link", "set", &agent_if, "up"])?;
    ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
    Ok((ns, host_ip, agent_ip))
}

/// curl, in the agent's namespace when `ns` is given; bounded to 10 s.
pub async fn curl(ns: Option<&str>, args: &[&str]) -> (i32, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => tokio::process::Command::new("curl"),
    };
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("curl ended")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
