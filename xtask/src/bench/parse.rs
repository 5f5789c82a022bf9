//! Reading figures out of console lines: Keel's exit counts and memory report, the test guest's timings.

use serde::Serialize;

/// One `capsule 'NAME' vCPU N: T exits (CAUSE COUNT, ...)` line of Keel's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitCounts {
    pub capsule: String,
    /// The vCPU's index; 0 when counts of several vCPUs were added up.
    pub vcpu: u32,
    pub total: u64,
    /// Causes in the order Keel prints them, e.g. ("SBI", 166); a JSON object in that order.
    #[serde(serialize_with = "causes_as_object")]
    pub causes: Vec<(String, u64)>,
}

fn causes_as_object<S: serde::Serializer>(
    causes: &[(String, u64)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(causes.iter().map(|(name, count)| (name, count)))
}

impl ExitCounts {
    pub fn cause(&self, name: &str) -> Option<u64> {
        self.causes
            .iter()
            .find(|(cause, _)| cause == name)
            .map(|&(_, count)| count)
    }

    /// Adds another vCPU's (or another shutdown's) counts, cause by cause; causes only one side has are kept.
    pub fn add(&mut self, other: &ExitCounts) {
        self.total += other.total;
        for (name, count) in &other.causes {
            match self.causes.iter_mut().find(|(cause, _)| cause == name) {
                Some((_, mine)) => *mine += count,
                None => self.causes.push((name.clone(), *count)),
            }
        }
    }
}

/// Parses Keel's exit-count line; `None` for any other line.
pub fn exit_counts(line: &str) -> Option<ExitCounts> {
    let (_, after) = line.split_once("capsule '")?;
    let (capsule, after) = after.split_once("' vCPU ")?;
    let (vcpu, after) = after.split_once(": ")?;
    let (total, after) = after.split_once(" exits (")?;
    let (list, _) = after.split_once(')')?;
    let mut causes = Vec::new();
    for item in list.split(", ") {
        // The cause name may have spaces ("virtual instruction"); the count is the last word.
        let (name, count) = item.trim().rsplit_once(' ')?;
        causes.push((name.to_string(), count.parse().ok()?));
    }
    Some(ExitCounts {
        capsule: capsule.to_string(),
        vcpu: vcpu.trim().parse().ok()?,
        total: total.trim().parse().ok()?,
        causes,
    })
}

/// Every exit-count line of the capsule `capsule` in a transcript, added up over vCPUs.
pub fn total_exit_counts(transcript: &str, capsule: &str) -> Option<ExitCounts> {
    let mut sum: Option<ExitCounts> = None;
    for counts in transcript.lines().filter_map(exit_counts) {
        if counts.capsule != capsule {
            continue;
        }
        match &mut sum {
            Some(sum) => sum.add(&counts),
            None => sum = Some(ExitCounts { vcpu: 0, ..counts }),
        }
    }
    sum
}

/// `after - before`, first the total, then cause by cause. Negative differences are kept: two
/// separate runs can differ either way, and the caller reports what it sees. `None` when the two
/// lines do not list the same causes.
pub fn exit_difference(after: &ExitCounts, before: &ExitCounts) -> Option<Vec<(String, i64)>> {
    let mut difference = vec![(
        "total".to_string(),
        i64::try_from(after.total).ok()? - i64::try_from(before.total).ok()?,
    )];
    if after.causes.len() != before.causes.len() {
        return None;
    }
    for (name, count) in &after.causes {
        let earlier = before.cause(name)?;
        difference.push((
            name.clone(),
            i64::try_from(*count).ok()? - i64::try_from(earlier).ok()?,
        ));
    }
    Some(difference)
}

/// Keel's boot report: `N harts online; F of T MiB free; Sstc yes; ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostMemory {
    pub harts: u32,
    pub free_mib: u64,
    pub total_mib: u64,
    pub sstc: Option<bool>,
}

pub fn host_memory(line: &str) -> Option<HostMemory> {
    let (before, after) = line.split_once(" harts online; ")?;
    let harts = before.rsplit(' ').next()?.parse().ok()?;
    let (free, after) = after.split_once(" of ")?;
    let (total, after) = after.split_once(" MiB free")?;
    let sstc = after
        .split("; ")
        .find_map(|part| part.strip_prefix("Sstc "))
        .and_then(|word| match word.split_whitespace().next()? {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        });
    Some(HostMemory {
        harts,
        free_mib: free.trim().parse().ok()?,
        total_mib: total.trim().parse().ok()?,
        sstc,
    })
}

/// `capsule ID 'NAME': G-stage tables use K KiB` -> (NAME, K).
pub fn gstage_tables(line: &str) -> Option<(String, u64)> {
    let (_, after) = line.split_once("capsule ")?;
    let (_, after) = after.split_once('\'')?;
    let (name, after) = after.split_once("': G-stage tables use ")?;
    let (kib, _) = after.split_once(" KiB")?;
    Some((name.to_string(), kib.trim().parse().ok()?))
}

/// The test guest's `keel-bench NAME VALUE` lines -> (NAME, VALUE). The value must be a finite number.
pub fn bench_value(line: &str) -> Option<(String, f64)> {
    let mut words = line.split_whitespace();
    if words.next()? != "keel-bench" {
        return None;
    }
    let name = words.next()?;
    let value: f64 = words.next()?.parse().ok()?;
    (words.next().is_none() && value.is_finite()).then(|| (name.to_string(), value))
}

/// The busy loop's closing `keel-busy-done ITERATIONS` line -> ITERATIONS.
pub fn busy_done(line: &str, marker: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    if words.next()? != marker {
        return None;
    }
    let count = words.next()?.parse().ok()?;
    words.next().is_none().then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXITS: &str = "[keel h0] INFO  capsule 'boot' vCPU 0: 9119 exits (SBI 166, MMIO 8946, virtual instruction 0, faults injected 1, host timer 0, host external 6, IPIs 0, other 0)";

    #[test]
    fn exit_counts_line_is_parsed_by_cause() {
        let counts = exit_counts(EXITS).unwrap();
        assert_eq!(counts.capsule, "boot");
        assert_eq!(counts.vcpu, 0);
        assert_eq!(counts.total, 9119);
        assert_eq!(counts.causes.len(), 8);
        assert_eq!(counts.cause("SBI"), Some(166));
        assert_eq!(counts.cause("MMIO"), Some(8946));
        assert_eq!(counts.cause("virtual instruction"), Some(0));
        assert_eq!(counts.cause("faults injected"), Some(1));
        assert_eq!(counts.cause("host external"), Some(6));
        assert_eq!(counts.cause("IPIs"), Some(0));
        assert_eq!(counts.cause("nonsense"), None);
    }

    #[test]
    fn causes_serialise_as_an_object_in_keel_order() {
        let counts = exit_counts(EXITS).unwrap();
        let json = serde_json::to_string(&counts).unwrap();
        assert!(
            json.contains(r#""causes":{"SBI":166,"MMIO":8946,"virtual instruction":0,"#),
            "{json}"
        );
    }

    #[test]
    fn other_lines_and_damaged_exit_lines_are_not_counts() {
        assert_eq!(
            exit_counts("[keel h0] INFO  capsule 'boot' asked for Shutdown (NoReason)"),
            None
        );
        assert_eq!(exit_counts("keel-guest# echo hi"), None);
        assert_eq!(
            exit_counts("capsule 'boot' vCPU 0: many exits (SBI 1)"),
            None
        );
        assert_eq!(exit_counts("capsule 'boot' vCPU 0: 5 exits (SBI x)"), None);
        assert_eq!(exit_counts("capsule 'boot' vCPU 0: 5 exits (SBI 1"), None);
        assert_eq!(
            exit_counts("capsule 'boot' vCPU zero: 5 exits (SBI 1)"),
            None
        );
    }

    #[test]
    fn transcript_counts_add_up_over_vcpus_of_one_capsule() {
        let transcript = format!(
            "{EXITS}\nnoise\n[keel h1] INFO  capsule 'boot' vCPU 1: 10 exits (SBI 4, MMIO 6, virtual instruction 0, faults injected 0, host timer 0, host external 0, IPIs 0, other 0)\n\
             [keel h1] INFO  capsule 'other' vCPU 0: 99 exits (SBI 99)\n"
        );
        let total = total_exit_counts(&transcript, "boot").unwrap();
        assert_eq!(total.total, 9129);
        assert_eq!(total.cause("SBI"), Some(170));
        assert_eq!(total.cause("MMIO"), Some(8952));
        assert_eq!(total_exit_counts("nothing here", "boot"), None);
    }

    #[test]
    fn difference_subtracts_cause_by_cause() {
        let before = exit_counts(EXITS).unwrap();
        let after = exit_counts("capsule 'boot' vCPU 0: 10119 exits (SBI 266, MMIO 9846, virtual instruction 0, faults injected 1, host timer 0, host external 6, IPIs 0, other 0)").unwrap();
        let difference = exit_difference(&after, &before).unwrap();
        assert_eq!(difference[0], ("total".to_string(), 1000));
        assert!(difference.contains(&("SBI".to_string(), 100)));
        assert!(difference.contains(&("MMIO".to_string(), 900)));
        // Counts can differ in sign between two separate runs; the caller decides what that means.
        let reverse = exit_difference(&before, &after).unwrap();
        assert_eq!(reverse[0], ("total".to_string(), -1000));
        let fewer = exit_counts("capsule 'boot' vCPU 0: 1 exits (SBI 1)").unwrap();
        assert_eq!(exit_difference(&after, &fewer), None);
    }

    #[test]
    fn host_memory_line_is_parsed() {
        let line = "[keel h0] INFO  2 harts online; 1008 of 1016 MiB free; Sstc yes; 14-bit VMIDs; guest ISA rv64imafdc";
        assert_eq!(
            host_memory(line),
            Some(HostMemory {
                harts: 2,
                free_mib: 1008,
                total_mib: 1016,
                sstc: Some(true)
            })
        );
        let no_sstc = "2 harts online; 1 of 2 MiB free; Sstc no";
        assert_eq!(host_memory(no_sstc).unwrap().sstc, Some(false));
        assert_eq!(
            host_memory("x harts online; 1 of 2 MiB free").map(|m| m.harts),
            None
        );
        assert_eq!(host_memory("2 harts online; lots of 2 MiB free"), None);
        assert_eq!(host_memory("Platform HART Count : 2"), None);
    }

    #[test]
    fn gstage_line_is_parsed() {
        assert_eq!(
            gstage_tables("[keel h0] INFO  capsule 1 'boot': G-stage tables use 20 KiB"),
            Some(("boot".to_string(), 20))
        );
        assert_eq!(
            gstage_tables("capsule 1 'boot': 256 MiB RAM, 1 vCPU(s)"),
            None
        );
        assert_eq!(
            gstage_tables("capsule 1 'boot': G-stage tables use ? KiB"),
            None
        );
    }

    #[test]
    fn bench_values_need_a_name_and_a_finite_number() {
        assert_eq!(
            bench_value("keel-bench sbi-call-ns 123.5\r"),
            Some(("sbi-call-ns".to_string(), 123.5))
        );
        assert_eq!(
            bench_value("  keel-bench mmio-read-ns 80"),
            Some(("mmio-read-ns".to_string(), 80.0))
        );
        assert_eq!(bench_value("keel-bench sbi-call-ns"), None);
        assert_eq!(bench_value("keel-bench sbi-call-ns fast"), None);
        assert_eq!(bench_value("keel-bench sbi-call-ns inf"), None);
        assert_eq!(bench_value("keel-bench sbi-call-ns 1 2"), None);
        assert_eq!(bench_value("other sbi-call-ns 1"), None);
    }

    #[test]
    fn busy_marker_needs_a_count() {
        assert_eq!(busy_done("keel-busy-done 42", "keel-busy-done"), Some(42));
        // The shell echoes the typed command, where the count is still a variable.
        assert_eq!(busy_done("keel-busy-done $n", "keel-busy-done"), None);
        assert_eq!(
            busy_done("keel-guest# x; echo keel-busy-done $n", "keel-busy-done"),
            None
        );
        assert_eq!(busy_done("keel-busy-done 1 2", "keel-busy-done"), None);
    }
}
