//! `daolinet-cni`: DaoliNet's CNI plugin. A runtime runs it with the CNI
//! environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`) and the network configuration on
//! stdin; the result (or error) goes to stdout as JSON. See the crate's
//! README for the configuration.

use daolinet_cni::plugin::DaoliNetCni;
use rscni_plugin::cni::Plugin;

fn main() {
    let plugin = Plugin::default().msg(concat!(
        "daolinet-cni ",
        env!("CARGO_PKG_VERSION"),
        ": containers join DaoliNet networks through the host's daolinet-agent"
    ));
    if plugin.run(&DaoliNetCni).is_err() {
        // The error result is on stdout already.
        std::process::exit(1);
    }
}
