//! The `tokio_*` families, read from the watched runtimes when `/metrics` is scraped.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::watched;

const WORKER: &str = "worker";

/// `(name, type, help, per worker)` of every family, in exposition order.
const FAMILIES: &[(&str, MetricType, &str, bool)] = &[
    ("tokio_workers", MetricType::GAUGE, "Worker threads of the watched tokio runtimes.", false),
    ("tokio_alive_tasks", MetricType::GAUGE, "Tasks alive in the watched tokio runtimes (spawned, not yet finished), observe's own left out; tasks of an actix-web worker's LocalSet (actix_web::rt::spawn) are not counted.", false),
    ("tokio_global_queue_depth", MetricType::GAUGE, "Tasks waiting in the runtimes' global (injection) queues.", false),
    ("tokio_worker_busy_seconds_total", MetricType::COUNTER, "Time the worker spent running tasks, published by tokio when it parks and every 61 polls.", true),
    ("tokio_worker_parks_total", MetricType::COUNTER, "Times the worker parked, waiting for work.", true),
    ("tokio_worker_current_stall_seconds", MetricType::GAUGE, "How long the worker has been running without publishing progress, when 0.1 s or more (a task blocking its thread); 0 otherwise.", true),
    ("tokio_worker_stalled_seconds_total", MetricType::COUNTER, "Time the worker spent in stalls of 0.1 s or more.", true),
    #[cfg(tokio_unstable)]
    ("tokio_worker_polls_total", MetricType::COUNTER, "Task polls by the worker (tokio_unstable builds).", true),
    #[cfg(tokio_unstable)]
    ("tokio_worker_local_queue_depth", MetricType::GAUGE, "Tasks in the worker's local queue (tokio_unstable builds).", true),
    #[cfg(tokio_unstable)]
    ("tokio_spawned_tasks_total", MetricType::COUNTER, "Tasks spawned on the watched runtimes, those that shut down included, observe's own left out (tokio_unstable builds).", false),
    #[cfg(tokio_unstable)]
    ("tokio_blocking_threads", MetricType::GAUGE, "Threads of the runtimes' blocking pools (tokio_unstable builds).", false),
];

/// Exposes the watched runtimes to a `prometheus::Registry`; registered on every registry
/// observe builds (once: a registry shared by two services carries it once).
pub(crate) struct RuntimeCollector {
    descs: Vec<Desc>,
}

impl RuntimeCollector {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let descs = FAMILIES
            .iter()
            .map(|(name, _, help, per_worker)| {
                let labels = if *per_worker {
                    vec![WORKER.to_owned()]
                } else {
                    vec![]
                };
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels,
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(RuntimeCollector { descs })
    }
}

fn gauge(value: f64, worker: Option<usize>) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = metric(worker);
    m.set_gauge(g);
    m
}

fn counter(value: f64, worker: Option<usize>) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = metric(worker);
    m.set_counter(c);
    m
}

fn metric(worker: Option<usize>) -> Metric {
    let labels = worker
        .map(|w| {
            let mut pair = LabelPair::default();
            pair.set_name(WORKER.to_owned());
            pair.set_value(w.to_string());
            vec![pair]
        })
        .unwrap_or_default();
    Metric::from_label(labels)
}

impl Collector for RuntimeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let watched = watched();
        if watched.runtimes.is_empty() {
            return Vec::new();
        }
        let mut values: Vec<Vec<Metric>> = vec![Vec::new(); FAMILIES.len()];
        let mut totals = [0f64; FAMILIES.len()];
        #[cfg(tokio_unstable)]
        {
            totals[9] = watched.retired_spawned_tasks as f64;
        }
        for runtime in watched.runtimes.iter() {
            let m = runtime.handle.metrics();
            totals[0] += m.num_workers() as f64;
            totals[1] += runtime.alive_tasks() as f64;
            totals[2] += m.global_queue_depth() as f64;
            #[cfg(tokio_unstable)]
            {
                totals[9] += runtime.spawned_tasks() as f64;
                totals[10] += m.num_blocking_threads() as f64;
            }
            for (index, watch) in runtime.workers.iter().enumerate() {
                let w = Some(watch.number);
                let busy = m.worker_total_busy_duration(index).as_secs_f64();
                values[3].push(counter(busy, w));
                values[4].push(counter(m.worker_park_count(index) as f64, w));
                values[5].push(gauge(watch.stalled.as_secs_f64(), w));
                values[6].push(counter(watch.stalled_total.as_secs_f64(), w));
                #[cfg(tokio_unstable)]
                {
                    values[7].push(counter(m.worker_poll_count(index) as f64, w));
                    values[8].push(gauge(m.worker_local_queue_depth(index) as f64, w));
                }
            }
        }
        drop(watched);
        FAMILIES
            .iter()
            .zip(values)
            .zip(totals)
            .map(|(((name, kind, help, per_worker), mut metrics), total)| {
                if !per_worker {
                    metrics = vec![match kind {
                        MetricType::COUNTER => counter(total, None),
                        _ => gauge(total, None),
                    }];
                }
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(*kind);
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenMetrics names a counter family without `_total`: a gauge `x` beside a counter
    /// `x_total` is two families of one name there, which parsers refuse (Python's
    /// `prometheus_client` refused `tokio_worker_stalled_seconds` beside
    /// `tokio_worker_stalled_seconds_total`).
    #[test]
    fn every_family_has_its_own_openmetrics_name() {
        let mut names: Vec<&str> = FAMILIES
            .iter()
            .map(|&(name, kind, _, _)| match kind {
                MetricType::COUNTER => name.strip_suffix("_total").unwrap_or(name),
                _ => name,
            })
            .collect();
        names.sort_unstable();
        let all = names.len();
        names.dedup();
        assert_eq!(names.len(), all, "{names:?}");
    }
}
