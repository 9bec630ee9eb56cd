//! Layout and limit files against a fake cgroupfs in a temporary directory, populated the way
//! the kernel populates a new group. cgroup v2 cannot be exercised for real on the
//! development machines (cgroup v1 hybrid), so these tests are its ground truth.

use std::fs;
use std::path::Path;
use std::time::Duration;

use skiff_cgroup::{Cgroups, Error, Limits, Version};

/// This machine's layout: v1 controllers plus a cgroup2 mount that has only hugetlb.
const HYBRID_MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
";
const HYBRID_SELF: &str = "\
8:pids:/
5:memory:/process_api/abc
3:cpuset:/
2:cpu,cpuacct:/
0::/
";

const V2_MOUNTINFO: &str =
    "25 21 0:22 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n";
const V2_SELF: &str = "0::/system.slice/skiff.service\n";

/// Creates `files` (name, content) in `dir`, like the kernel does on mkdir.
fn populate(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn hybrid_layout_is_v1_below_the_own_cgroup_of_each_controller() {
    let root = tempfile::tempdir().unwrap();
    let cg = Cgroups::from_system(HYBRID_MOUNTINFO, HYBRID_SELF, root.path(), "skiff").unwrap();
    assert_eq!(cg.version(), Version::V1);
    let bases: Vec<String> = cg
        .bases()
        .map(|(_, p)| p.strip_prefix(root.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        bases,
        [
            "sys/fs/cgroup/memory/process_api/abc/skiff",
            "sys/fs/cgroup/cpu,cpuacct/skiff",
            "sys/fs/cgroup/pids/skiff",
            // cpuacct, co-mounted with cpu: one directory serves both.
            "sys/fs/cgroup/cpu,cpuacct/skiff",
        ]
    );
}

#[test]
fn v1_limits_disable_swap_and_set_quota_and_pids() {
    let root = tempfile::tempdir().unwrap();
    let cg = Cgroups::from_system(HYBRID_MOUNTINFO, HYBRID_SELF, root.path(), "skiff").unwrap();
    let group = cg.open("dev/shop/api-1").unwrap();
    let dirs: Vec<_> = group.dirs().map(Path::to_path_buf).collect();
    let [mem, cpu, pids] = &dirs[..] else {
        panic!("{dirs:?}")
    };
    populate(
        mem,
        &[
            ("cgroup.procs", ""),
            ("memory.limit_in_bytes", "9223372036854771712"),
            ("memory.memsw.limit_in_bytes", "9223372036854771712"),
            ("memory.swappiness", "60"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            ),
        ],
    );
    populate(
        cpu,
        &[
            ("cgroup.procs", ""),
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "-1"),
            ("cpuacct.usage", "2500000000"),
        ],
    );
    populate(pids, &[("cgroup.procs", ""), ("pids.max", "max")]);

    let limits = Limits {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids: Some(32),
    };
    let group = cg.create("dev/shop/api-1", &limits).unwrap();
    assert_eq!(read(&mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(&mem.join("memory.memsw.limit_in_bytes")), "67108864");
    assert_eq!(read(&mem.join("memory.swappiness")), "0");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(&pids.join("pids.max")), "32");
    assert_eq!(
        group.procs_files(),
        [
            mem.join("cgroup.procs"),
            cpu.join("cgroup.procs"),
            pids.join("cgroup.procs")
        ]
    );

    // The kernel counts an OOM kill.
    fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    )
    .unwrap();
    assert_eq!(group.oom_kills(), 1);
    assert_eq!(group.stats().oom_kills, 1);
    assert_eq!(group.stats().cpu_ns, Some(2_500_000_000));

    group.remove().unwrap();
    assert!(!mem.exists() && !cpu.exists() && !pids.exists());
    // Empty parents go too, the base stays until the supervisor removes it.
    assert!(!mem.parent().unwrap().exists());
    assert!(cg.bases().all(|(_, b)| b.exists()));
    cg.remove_base_if_empty();
    assert!(cg.bases().all(|(_, b)| !b.exists()));
}

#[test]
fn v2_enables_controllers_at_every_level_and_writes_unified_limits() {
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("sys/fs/cgroup");
    populate(
        &mount,
        &[(
            "cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc",
        )],
    );
    let own = mount.join("system.slice/skiff.service");
    populate(
        &own,
        &[("cgroup.procs", ""), ("cgroup.subtree_control", "")],
    );
    let cg = Cgroups::from_system(V2_MOUNTINFO, V2_SELF, root.path(), "skiff").unwrap();
    assert_eq!(cg.version(), Version::V2);

    let base = own.join("skiff");
    let leaf = base.join("dev/shop/api-1");
    for level in [&base, &base.join("dev"), &base.join("dev/shop")] {
        populate(
            level,
            &[("cgroup.procs", ""), ("cgroup.subtree_control", "")],
        );
    }
    populate(
        &leaf,
        &[
            ("cgroup.procs", ""),
            ("memory.max", "max"),
            ("memory.swap.max", "max"),
            ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
            ("cpu.max", "max 100000"),
            ("pids.max", "max"),
        ],
    );
    let limits = Limits {
        memory_bytes: Some(128 << 20),
        cpus: Some(1.5),
        pids: Some(100),
    };
    let group = cg.create("dev/shop/api-1", &limits).unwrap();
    for level in [&own, &base, &base.join("dev"), &base.join("dev/shop")] {
        assert_eq!(
            read(&level.join("cgroup.subtree_control")),
            "+memory +cpu +pids",
            "{}",
            level.display()
        );
    }
    assert_eq!(read(&leaf.join("memory.max")), "134217728");
    assert_eq!(read(&leaf.join("memory.swap.max")), "0");
    assert_eq!(read(&leaf.join("cpu.max")), "150000 100000");
    assert_eq!(read(&leaf.join("pids.max")), "100");
    assert_eq!(group.procs_files(), [leaf.join("cgroup.procs")]);

    fs::write(
        leaf.join("memory.events"),
        "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
    )
    .unwrap();
    assert_eq!(group.oom_kills(), 2);
    fs::write(leaf.join("memory.current"), "1048576\n").unwrap();
    fs::write(leaf.join("pids.current"), "3\n").unwrap();
    fs::write(
        leaf.join("cpu.stat"),
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
    )
    .unwrap();
    let stats = group.stats();
    assert_eq!(stats.cpu_ns, Some(1_500_000));
    assert_eq!(stats.memory_bytes, Some(1 << 20));
    assert_eq!(stats.memory_limit_bytes, Some(128 << 20));
    assert_eq!(stats.pids, Some(3));
}

#[test]
fn v2_without_a_controller_refuses_that_limit_by_name() {
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("sys/fs/cgroup");
    populate(&mount, &[("cgroup.controllers", "cpu memory")]);
    let cg = Cgroups::from_system(V2_MOUNTINFO, V2_SELF, root.path(), "skiff").unwrap();
    let err = cg
        .create(
            "a/b-1",
            &Limits {
                pids: Some(5),
                ..Limits::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)));
    assert!(err.to_string().contains("pids controller"), "{err}");
}

#[test]
fn hybrid_cgroup2_with_only_hugetlb_and_no_v1_is_unavailable() {
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("sys/fs/cgroup/unified");
    populate(&mount, &[("cgroup.controllers", "hugetlb")]);
    let mountinfo = "31 24 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
    let err = Cgroups::from_system(mountinfo, "0::/\n", root.path(), "skiff").unwrap_err();
    assert!(
        err.to_string().contains("offers none of memory, cpu, pids"),
        "{err}"
    );
}

#[test]
fn a_limit_file_missing_from_the_group_is_an_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let cg = Cgroups::from_system(HYBRID_MOUNTINFO, HYBRID_SELF, root.path(), "skiff").unwrap();
    let err = cg
        .create(
            "x/y-1",
            &Limits {
                pids: Some(5),
                ..Limits::default()
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("pids/skiff/x/y-1/pids.max"),
        "{err}"
    );
}

#[test]
fn groups_created_while_a_sibling_is_removed_never_lose_their_parent() {
    // Removing a group removes its parents when they are empty; a sibling being created in
    // the same parent at that moment must still succeed (`down` then `up` of one stack).
    let root = tempfile::tempdir().unwrap();
    let cg = Cgroups::from_system(HYBRID_MOUNTINFO, HYBRID_SELF, root.path(), "skiff").unwrap();
    let cg = std::sync::Arc::new(cg);
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let cg = cg.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let group = cg
                        .create(&format!("dev/shop/web-{t}"), &Limits::default())
                        .unwrap_or_else(|e| panic!("worker {t}, round {i}: {e}"));
                    group.remove().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// The hybrid layout with the v1 freezer mounted too (as on this machine).
const FREEZER_MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/freezer rw,nosuid - cgroup cgroup rw,freezer
";

#[test]
fn v1_freeze_and_thaw_write_freezer_state_and_the_workload_joins_the_freezer() {
    let root = tempfile::tempdir().unwrap();
    let cg = Cgroups::from_system(FREEZER_MOUNTINFO, "0::/\n", root.path(), "skiff").unwrap();
    let freezer = root
        .path()
        .join("sys/fs/cgroup/freezer/skiff/dev/shop/db-1");
    populate(
        &freezer,
        &[("cgroup.procs", ""), ("freezer.state", "THAWED\n")],
    );
    let group = cg.create("dev/shop/db-1", &Limits::default()).unwrap();
    assert!(group.procs_files().contains(&freezer.join("cgroup.procs")));
    assert!(!group.frozen().unwrap());
    group.freeze(Duration::from_secs(1)).unwrap();
    assert_eq!(read(&freezer.join("freezer.state")), "FROZEN");
    assert!(group.frozen().unwrap());
    group.thaw(Duration::from_secs(1)).unwrap();
    assert_eq!(read(&freezer.join("freezer.state")), "THAWED");
    assert!(!group.frozen().unwrap());
}

#[test]
fn v1_without_a_freezer_mount_says_so_instead_of_freezing_nothing() {
    let root = tempfile::tempdir().unwrap();
    let cg = Cgroups::from_system(HYBRID_MOUNTINFO, HYBRID_SELF, root.path(), "skiff").unwrap();
    let group = cg.open("dev/shop/db-1").unwrap();
    let err = group.freeze(Duration::from_millis(50)).unwrap_err();
    assert!(err.to_string().contains("freezer"), "{err}");
}

#[test]
fn v2_freeze_waits_for_the_kernel_to_report_frozen_and_thaws_on_a_timeout() {
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("sys/fs/cgroup");
    populate(&mount, &[("cgroup.controllers", "memory pids")]);
    let leaf = mount.join("system.slice/skiff.service/skiff/dev/shop/db-1");
    populate(
        &leaf,
        &[
            ("cgroup.procs", ""),
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 1\nfrozen 0\n"),
        ],
    );
    let cg = Cgroups::from_system(V2_MOUNTINFO, V2_SELF, root.path(), "skiff").unwrap();
    let group = cg.open("dev/shop/db-1").unwrap();

    // Nothing answers for the kernel: the freeze times out and leaves the group thawed.
    let err = group.freeze(Duration::from_millis(30)).unwrap_err();
    assert!(err.to_string().contains("frozen 1"), "{err}");
    assert_eq!(read(&leaf.join("cgroup.freeze")), "0");

    // A thread plays the kernel: cgroup.events follows cgroup.freeze after a moment.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kernel = {
        let (leaf, stop) = (leaf.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let want = fs::read_to_string(leaf.join("cgroup.freeze")).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                let events = format!("populated 1\nfrozen {}\n", want.trim());
                fs::write(leaf.join("cgroup.events"), events).unwrap();
            }
        })
    };
    group.freeze(Duration::from_secs(2)).unwrap();
    assert_eq!(read(&leaf.join("cgroup.freeze")), "1");
    assert!(group.frozen().unwrap());
    group.thaw(Duration::from_secs(2)).unwrap();
    assert!(!group.frozen().unwrap());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    kernel.join().unwrap();
}
