//! Backend selection and the CPU process settings that come with it.

use snnet::backend::{keep_freed_memory, run_on_with, BackendError, BackendTask, Precision};

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("procfs");
    // Fields after the command name (which may contain spaces) start at field 3.
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    after_name.split(' ').nth(7).and_then(|f| f.parse().ok()).expect("minflt field")
}

/// Run alone in a child process by the test below: prints the page faults per matmul of DeiT-S
/// fc1 at batch 8 (burn-flex allocates its 9.7 MB output afresh on every call), with
/// [`keep_freed_memory`] applied unless `SNNET_TEST_GLIBC_DEFAULTS` is set; with
/// `SNNET_TEST_RUN_ON` too, after a task has run through [`run_on_with`] on `flex`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
#[ignore = "run in a child process by op_outputs_reuse_freed_memory_instead_of_faulting_in_new_pages"]
fn page_faults_per_matmul_probe() {
    use burn::{
        backend::Flex,
        tensor::{Distribution, Tensor},
    };
    if std::env::var_os("SNNET_TEST_GLIBC_DEFAULTS").is_none() {
        assert!(keep_freed_memory(), "glibc accepts the settings");
        assert!(keep_freed_memory(), "a second call is harmless");
    } else if std::env::var_os("SNNET_TEST_RUN_ON").is_some() {
        assert_eq!(run_on_with("flex", Precision::F32, DeviceName).unwrap(), "flex");
    }
    // In a thread started after the settings, as the training workers are.
    let per_matmul = std::thread::spawn(|| {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::random([1576, 384], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Flex, 2>::random([384, 1536], Distribution::Normal(0.0, 1.0), &device);
        std::hint::black_box(x.clone().matmul(w.clone()));
        let before = minor_faults();
        for _ in 0..5 {
            std::hint::black_box(x.clone().matmul(w.clone()));
        }
        (minor_faults() - before) / 5
    });
    println!("page faults per matmul: {}", per_matmul.join().expect("probe thread"));
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn op_outputs_reuse_freed_memory_instead_of_faulting_in_new_pages() {
    let probe = |glibc_defaults: bool, run_on: bool| -> u64 {
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"));
        child.args(["--ignored", "--exact", "--nocapture", "--test-threads", "1", "integration::backend::page_faults_per_matmul_probe"]);
        if glibc_defaults {
            child.env("SNNET_TEST_GLIBC_DEFAULTS", "1");
        }
        if run_on {
            child.env("SNNET_TEST_RUN_ON", "1");
        }
        let out = child.output().expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "probe failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let count = stdout.split("page faults per matmul: ").nth(1).expect("probe output");
        count.split_whitespace().next().and_then(|c| c.parse().ok()).expect("a count")
    };
    let (defaults, kept) = (probe(true, false), probe(false, false));
    // Measured here: 1,416 with glibc's defaults (the output has 2,364 pages, and burn-flex copies
    // each new buffer once more to align it), 472 with freed memory kept.
    assert!(kept * 2 < defaults, "{kept} faults per matmul with freed memory kept, {defaults} without");
    // The setting is the program's to make: running on the CPU backend leaves the allocator alone.
    let through_run_on = probe(true, true);
    assert!(kept * 2 < through_run_on, "{through_run_on} faults per matmul after run_on without the setting, {kept} with it");
}

struct DeviceName;

impl BackendTask for DeviceName {
    type Output = &'static str;
    fn run<B: burn::tensor::backend::Backend>(self, _device: B::Device, name: &'static str) -> &'static str {
        name
    }
}

#[test]
fn the_cpu_backend_runs_and_unknown_names_or_precisions_are_refused() {
    assert_eq!(run_on_with("flex", Precision::F32, DeviceName).unwrap(), "flex");
    assert!(matches!(run_on_with("tpu", Precision::F32, DeviceName), Err(BackendError::Unknown(name)) if name == "tpu"));
    let err = run_on_with("flex", Precision::BF16, DeviceName).unwrap_err();
    assert!(err.to_string().contains("does not run bf16"), "{err}");
}

#[test]
fn independent_forwards_share_the_cpu_threads_and_a_gpu_runs_one() {
    let cpu_threads = snnet::core::kernels::cpu_threads();
    assert!(cpu_threads >= 1);
    assert_eq!(snnet::backend::default_workers("flex"), cpu_threads);
    assert_eq!(snnet::backend::default_workers("cpu"), cpu_threads);
    for gpu in ["cuda", "wgpu", "vulkan", "metal"] {
        assert_eq!(snnet::backend::default_workers(gpu), 1, "{gpu}");
    }
}

#[test]
fn data_parallel_peers_share_the_cpu_and_take_one_gpu_each() {
    use burn::tensor::backend::DeviceId;
    let cpu = burn::backend::flex::FlexDevice;
    assert_eq!(snnet::backend::peer_devices(&cpu, 3), vec![cpu; 3], "the CPU backend has one device");
    assert_eq!(snnet::backend::peer_devices(&cpu, 1), vec![cpu]);
    // A device type with several devices (what the GPU backends' ids look like): 0, 1, 2 of its kind.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Numbered(u16, u16);
    impl burn::tensor::backend::Device for Numbered {
        fn from_id(id: DeviceId) -> Self {
            Numbered(id.type_id, id.index_id)
        }
        fn to_id(&self) -> DeviceId {
            DeviceId { type_id: self.0, index_id: self.1 }
        }
    }
    impl burn::tensor::backend::DeviceOps for Numbered {}
    let devices = snnet::backend::peer_devices(&Numbered(7, 0), 3);
    assert_eq!(devices, [Numbered(7, 0), Numbered(7, 1), Numbered(7, 2)]);
}
