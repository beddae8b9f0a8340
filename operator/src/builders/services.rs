//! The two Services: headless for peer DNS, client for applications.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildError, NODE_PORT, client_name, headless_name, meta, selector_labels};
use crate::crd::ConfmanCluster;

fn http_port(port: i32) -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        port,
        target_port: Some(IntOrString::Int(NODE_PORT)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// Headless Service giving each pod a stable DNS name; not-ready pods are published so peers
/// can find each other before the cluster has a leader.
pub fn headless_service(c: &ConfmanCluster) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: meta(c, headless_name(c))?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(c)),
            ports: Some(vec![http_port(NODE_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Client Service load-balancing across ready pods (followers forward writes to the leader).
pub fn client_service(c: &ConfmanCluster) -> Result<Service, BuildError> {
    let svc = c.spec.service.as_ref();
    Ok(Service {
        metadata: meta(c, client_name(c))?,
        spec: Some(ServiceSpec {
            type_: Some(svc.and_then(|s| s.type_.clone()).unwrap_or_else(|| "ClusterIP".into())),
            selector: Some(selector_labels(c)),
            ports: Some(vec![http_port(svc.and_then(|s| s.port).unwrap_or(NODE_PORT))]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PayloadClass, ServiceSpec as CmcService};
    use crate::fixtures::cluster;

    #[test]
    fn headless_service_publishes_not_ready_pods() -> Result<(), BuildError> {
        let s = headless_service(&cluster(3, PayloadClass::Small))?;
        let spec = s.spec.unwrap_or_default();
        assert_eq!(s.metadata.name.as_deref(), Some("config-peers"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        Ok(())
    }

    #[test]
    fn client_service_honours_type_and_port() -> Result<(), BuildError> {
        let mut c = cluster(3, PayloadClass::Small);
        c.spec.service = Some(CmcService { type_: Some("LoadBalancer".into()), port: Some(80) });
        let spec = client_service(&c)?.spec.unwrap_or_default();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let port = &spec.ports.unwrap_or_default()[0];
        assert_eq!((port.port, port.target_port.clone()), (80, Some(IntOrString::Int(NODE_PORT))));
        Ok(())
    }
}
