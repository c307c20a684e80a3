"""bench/bench_profile.py: the kernel-name classifier, the trace analysis (a synthetic CUDA trace in Kineto's Chrome
format), and the CPU smoke run of both trainers' profiled steps."""
import json

import pytest
import torch

from bench.bench_profile import CATEGORIES, RANGES, analyse_trace, classify, main

# Real kernel names (PyTorch 2.x, cuDNN 9, cuBLAS, CUPTI's copy/set records), the range around their launch, the CPU op
# that launched them, and the category they belong to.
KERNELS = [
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_g1_execute_s"
     "egment_k_off_kernel__5x_cudnn", "forward", "aten::cudnn_convolution", "conv_fwd"),
    ("sm80_xmma_fprop_implicit_gemm_indexed_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize64x64x64_stage4_warpsize2x2x1_g1_t"
     "ensor16x8x16_kernel", "forward", "", "conv_fwd"),
    ("sm90_xmma_dgrad_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_g1_execute_s"
     "egment_k_off_kernel__5x_cudnn", "backward", "aten::convolution_backward", "conv_bwd"),
    ("sm90_xmma_wgrad_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_g1_execute_s"
     "egment_k_off_kernel__5x_cudnn", "backward", "aten::convolution_backward", "conv_bwd"),
    ("void cudnn::cnn::wgrad2d_grouped_direct_kernel<false, true, int, __half, float, float>(cudnn::cnn::WgradGroupedD"
     "irectParams, __half const*, __half const*, __half*, float, float)", "backward", "", "conv_bwd"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_f16_s161616gemm_f16_32x32_128x2_tn_align8>(cutlass_80_wmma_tensor"
     "op_f16_s161616gemm_f16_32x32_128x2_tn_align8::Params)", "forward", "aten::cudnn_convolution", "conv_fwd"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_f16_s161616gemm_f16_32x32_128x2_tn_align8>(cutlass_80_wmma_tensor"
     "op_f16_s161616gemm_f16_32x32_128x2_tn_align8::Params)", "forward", "aten::bmm", "gemm"),
    ("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NNN", "backward", "aten::mm", "gemm"),
    ("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_nn", "forward", "aten::matmul", "gemm"),
    ("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_nn", "loss", "aten::matmul", "loss_assigner"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false, true, (cudnnKernelDataType_t)0>("
     "cudnn::engines_precompiled::nchw2nhwc_params_t<float>, __half const*, __half*)",
     "forward", "aten::cudnn_convolution", "copy_cat_layout"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueType<2u>, u"
     "nsigned int, 4, 64, 64>(at::native::(anonymous namespace)::OpaqueType<2u>*, at::native::(anonymous namespace)::Ca"
     "tArrInputTensorMetadata<at::native::(anonymous namespace)::OpaqueType<2u>, unsigned int, 64, 64>, at::native::(an"
     "onymous namespace)::TensorSizeStride<unsigned int, 4u>, int, unsigned int)",
     "forward", "aten::cat", "copy_cat_layout"),
    ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::direct_copy_kernel_cu"
     "da(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}::operator()() const::{lambda(float)#1"
     "}>(at::TensorIteratorBase&, at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator("
     ")() const::{lambda()#7}::operator()() const::{lambda(float)#1} const&)::{lambda(int)#1}>(int, at::native::gpu_ker"
     "nel_impl_nocast<...>)", "outside", "aten::copy_", "copy_cat_layout"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel(at::TensorIteratorBase&)::{lambda()#1}"
     "::operator()() const::{lambda()#2}::operator()() const::{lambda(c10::Half)#1}, std::array<char*, 2ul> >(int, at::"
     "native::silu_kernel(at::TensorIteratorBase&)::{lambda()#1}::operator()() const::{lambda()#2}::operator()() const:"
     ":{lambda(c10::Half)#1}, std::array<char*, 2ul>)", "forward", "aten::silu_", "activation"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::silu_backward_kernel(at::Te"
     "nsorIteratorBase&)::{lambda()#1}::operator()() const::{lambda()#2}::operator()() const::{lambda(c10::Half, c10::H"
     "alf)#1}, std::array<char*, 3ul> >(int, ...)", "backward", "aten::silu_backward", "activation"),
    ("void at::native::batch_norm_collect_statistics_channels_last_kernel<c10::Half, float, float, 4>(c10::Half const*"
     ", int, int, float, float*, float*, float*, int*, bool*)", "forward", "aten::cudnn_batch_norm", "batchnorm"),
    ("void at::native::batch_norm_backward_reduce_channels_last_kernel<4, c10::Half, float, float>(c10::Half const*, c"
     "10::Half const*, float const*, float const*, float*, float*, float*, float*, float*, int*, bool*, int, int)",
     "backward", "aten::native_batch_norm_backward", "batchnorm"),
    ("cudnn::bn_fw_tr_1C11_kernel_NCHW<__half, float, 512, true, 1>(cudnnTensorStruct, __half const*, cudnnTensorStruc"
     "t, __half*, float const*, float const*, float, float, float*, float*, float*, float*, float, float)",
     "forward", "", "batchnorm"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::TensorListM"
     "etadata<3>, at::native::(anonymous namespace)::FusedSgdMathFunctor<float, 3>, double, double, double, bool, bool,"
     " bool, float*, float const*>(...)", "optimizer", "aten::_fused_sgd_", "optimizer"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::TensorListM"
     "etadata<2>, at::native::(anonymous namespace)::BinaryOpScalarListFunctor<float, 2, 2, 0>, at::native::(anonymous "
     "namespace)::LerpFunctor<float>, float>(...)", "ema", "aten::_foreach_lerp_", "ema"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::TensorListM"
     "etadata<1>, at::native::(anonymous namespace)::ZeroFunctor<float, 1, 1, 0>>(...)", "outside", "", "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::Half>, std::array<char*, 3ul>"
     " >(int, at::native::CUDAFunctor_add<c10::Half>, std::array<char*, 3ul>)", "forward", "aten::add", "elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, at::native:"
     ":sum_functor<float, float, float>::operator()(at::TensorIterator&)::{lambda(float, float)#1}>, unsigned int, floa"
     "t, 4, 4> >(at::native::ReduceOp<...>)", "backward", "aten::sum", "reduction"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, at::native:"
     ":sum_functor<float, float, float>::operator()(at::TensorIterator&)::{lambda(float, float)#1}>, unsigned int, floa"
     "t, 4, 4> >(at::native::ReduceOp<...>)", "loss", "aten::sum", "loss_assigner"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::sigmoid_kernel_cuda(at::TensorIteratorBase&)::{lam"
     "bda()#2}::operator()() const::{lambda()#3}::operator()() const::{lambda(float)#1}, std::array<char*, 2ul> >(int, "
     "...)", "loss", "aten::sigmoid", "loss_assigner"),
    ("void at::native::(anonymous namespace)::upsample_nearest2d_nhwc_out_frame<c10::Half, at::native::nearest_idx>(c1"
     "0::Half const*, c10::Half*, unsigned long, unsigned long, unsigned long, unsigned long, unsigned long, float, flo"
     "at, unsigned long)", "forward", "aten::upsample_nearest2d", "pool_upsample"),
    ("void at::native::(anonymous namespace)::max_pool_forward_nhwc<c10::Half, c10::Half>(c10::Half const*, int, long,"
     " long, long, int, int, int, int, int, int, int, int, int, int, int, int, c10::Half*, long*)",
     "forward", "aten::max_pool2d_with_indices", "pool_upsample"),
    ("Memset (Device)", "backward", "aten::zero_", "memset"),
    ("Memcpy HtoD (Pinned -> Device)", "outside", "aten::copy_", "copy_cat_layout"),
    ("Memcpy DtoD (Device -> Device)", "forward", "aten::copy_", "copy_cat_layout"),
    ("triton_poi_fused__to_copy_add_mul_silu_0", "forward", "", "activation"),
    ("triton_red_fused_native_batch_norm_backward_1", "backward", "", "batchnorm"),
    ("void at::native::(anonymous namespace)::indexSelectLargeIndex<float, long, unsigned int, 2, 2, -2, true>(...)",
     "forward", "aten::index_select", "other"),
]


@pytest.mark.parametrize("name, range_name, op, category", KERNELS)
def test_classify_real_kernel_names(name, range_name, op, category):
    assert classify(name, range_name, op) == category


def test_classify_cpu_op_names():
    """--quick's CPU mode categorises the ops themselves."""
    assert classify("aten::mkldnn_convolution", "forward") == "conv_fwd"
    assert classify("aten::convolution_backward", "backward") == "conv_bwd"
    assert classify("aten::native_batch_norm", "forward") == "batchnorm"
    assert classify("aten::silu_", "forward") == "activation"
    assert classify("aten::cat", "forward") == "copy_cat_layout"
    assert classify("aten::copy_", "outside") == "copy_cat_layout"
    assert classify("aten::_foreach_lerp_", "ema") == "ema"
    assert classify("aten::mul", "backward") == "elementwise"
    assert classify("autograd::engine::evaluate_function: ConvolutionBackward0", "backward") == "other"


def test_classify_sorts_but_not_tensor_t():
    assert classify("void cub::DeviceRadixSortOnesweepKernel<...>(...)", "backward") == "reduction"
    assert classify("void at::native::TensorTransformKernel<float>(...)", "forward") == "other"


def _x(cat, name, ts, dur, tid, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur, "args": args}


def test_analyse_a_cuda_trace():
    """Kernels go to the range their launch falls in (any thread: backward launches from autograd's thread), to the
    GPU-side range when their launch is missing; per-step figures divide by the ProfilerStep count."""
    conv = "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_kernel"
    dgrad = "sm90_xmma_dgrad_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_kernel"
    silu = "void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel(...)>"
    sgd = "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<..., FusedSgdMathFunctor<float, 3>>(...)"
    events = [{"ph": "M", "name": "process_name", "pid": 7, "tid": 0, "args": {"name": "python"}}]
    for step in range(2):
        t = 1000.0 * step
        events += [_x("user_annotation", f"ProfilerStep#{step + 3}", t, 900, 1),
                   _x("user_annotation", "step::forward", t + 10, 100, 1),
                   _x("user_annotation", "step::loss", t + 110, 100, 1),
                   _x("user_annotation", "step::backward", t + 210, 300, 1),
                   _x("user_annotation", "step::optimizer", t + 510, 100, 1),
                   _x("user_annotation", "step::ema", t + 610, 50, 1),
                   _x("user_annotation", "Optimizer.step#SGD.step", t + 520, 50, 1),  # torch's own: not a range
                   _x("cpu_op", "aten::cudnn_convolution", t + 20, 30, 1, **{"External id": 100 + step}),
                   _x("cpu_op", "aten::convolution_backward", t + 300, 40, 2, **{"External id": 200 + step})]
        launches = [(t + 25, 1, 100 + step, conv, 5.0, "kernel"),        # forward, main thread
                    (t + 60, 1, 0, silu, 1.0, "kernel"),                 # forward
                    (t + 150, 1, 0, silu, 1.5, "kernel"),                # loss: not a conv -> loss_assigner
                    (t + 310, 2, 200 + step, dgrad, 8.0, "kernel"),      # backward, launched by autograd's thread
                    (t + 320, 2, 0, "Memset (Device)", 0.5, "gpu_memset"),
                    (t + 530, 1, 0, sgd, 2.0, "kernel"),                 # optimizer
                    (t + 700, 1, 0, "Memcpy DtoH (Device -> Pageable)", 0.25, "gpu_memcpy")]  # outside the ranges
        for i, (ts, tid, ext, name, dur, cat) in enumerate(launches):
            corr = 10_000 * step + i
            events.append(_x("cuda_runtime", "cudaLaunchKernel", ts, 3, tid, correlation=corr, **{"External id": ext}))
            events.append(_x(cat, name, ts + 200, dur, 9, correlation=corr, stream=7, **{"External id": ext}))
        # a kernel whose launch record is missing: placed by the GPU-side copy of the ranges
        events.append(_x("gpu_user_annotation", "step::ema", t + 850, 20, 9))
        events.append(_x("kernel", "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<LerpFunctor>()",
                         t + 855, 4.0, 9, correlation=99_999 - step))
    r = analyse_trace({"traceEvents": events}, steps_hint=5)
    assert r["source"] == "cuda kernels" and r["steps"] == 2
    cats = r["categories"]
    assert set(cats) == set(CATEGORIES)
    assert cats["conv_fwd"]["ms_per_step"] == pytest.approx(0.005)
    assert cats["conv_bwd"]["ms_per_step"] == pytest.approx(0.008)
    assert cats["activation"] == pytest.approx({"ms_per_step": 0.001, "share": 1 / 22.25, "launches_per_step": 1})
    assert cats["loss_assigner"]["ms_per_step"] == pytest.approx(0.0015)
    assert cats["memset"]["launches_per_step"] == 1
    assert cats["optimizer"]["ms_per_step"] == pytest.approx(0.002)
    assert cats["ema"]["ms_per_step"] == pytest.approx(0.004)
    assert cats["copy_cat_layout"]["ms_per_step"] == pytest.approx(0.00025)
    assert r["kernel_ms_per_step"] == pytest.approx(0.02225)
    assert r["launches_per_step"] == 8
    assert sum(c["share"] for c in cats.values()) == pytest.approx(1.0)
    assert r["ranges"]["backward"]["kernel_ms_per_step"] == pytest.approx(0.0085)
    assert r["ranges"]["backward"]["cpu_ms_per_step"] == pytest.approx(0.3)
    assert r["ranges"]["outside"]["kernel_ms_per_step"] == pytest.approx(0.00025)
    assert r["profiled_step_ms"] == pytest.approx(0.9)
    assert r["linked"] == {"launch": 14, "gpu_range": 2, "none": 0}
    assert r["top_kernels"][0][:3] == [dgrad, "conv_bwd", "backward"]


def test_analyse_without_cuda_kernels_uses_the_cpu_ops_self_time():
    events = [_x("user_annotation", "ProfilerStep#0", 0, 100, 1), _x("user_annotation", "step::forward", 0, 50, 1),
              _x("cpu_op", "aten::conv2d", 1, 40, 1), _x("cpu_op", "aten::mkldnn_convolution", 2, 30, 1),
              _x("cpu_op", "aten::silu_", 42, 5, 1), _x("user_annotation", "step::backward", 50, 40, 1),
              _x("cpu_op", "aten::convolution_backward", 55, 20, 3)]
    r = analyse_trace({"traceEvents": events}, steps_hint=1)
    assert r["source"] == "cpu ops" and "no CUDA kernels" in r["note"]
    assert r["categories"]["conv_fwd"] == pytest.approx({"ms_per_step": 0.04, "share": 40 / 65,
                                                         "launches_per_step": 2})  # 10 us own + 30 us
    assert r["categories"]["conv_bwd"]["ms_per_step"] == pytest.approx(0.02)
    assert r["ranges"]["forward"]["kernel_ms_per_step"] == pytest.approx(0.045)


def test_quick_cpu_run_profiles_both_trainers_and_every_range(tmp_path, capsys):
    out, traces = tmp_path / "p.json", tmp_path / "traces"
    threads = torch.get_num_threads()
    assert main(["--quick", "--out", str(out), "--trace_dir", str(traces)]) == 0
    assert torch.get_num_threads() == threads  # --quick profiles on one thread, then gives the others back
    r = json.loads(out.read_text())
    assert r["args"]["device"] == "cpu" and r["args"]["steps"] == 2 and "CUDA graph" in r["note"]
    for trainer in ("ours", "ultralytics"):
        for phase in ("frozen", "unfrozen"):
            e = r[trainer][phase]
            assert e["batch"] == 2 and e["eager_step_ms"] > 0
            assert e["graph_step_ms"] is None  # no CUDA graph on the CPU
            p = e["profile"]
            assert p["steps"] == 2 and p["source"] == "cpu ops"
            assert set(p["categories"]) == set(CATEGORIES)
            assert p["categories"]["conv_fwd"]["ms_per_step"] > 0
            assert p["categories"]["optimizer"]["ms_per_step"] > 0 and p["categories"]["ema"]["ms_per_step"] > 0
            for name in RANGES:
                assert p["ranges"][name]["cpu_ms_per_step"] > 0, (trainer, phase, name)
                assert p["ranges"][name]["kernel_ms_per_step"] > 0, (trainer, phase, name)
            assert (traces / f"{trainer}_{phase}.json.gz").is_file()
    printed = capsys.readouterr().out
    assert "ours, unfrozen" in printed and "Ultralytics, frozen" in printed


def test_ours_refuses_to_profile_when_the_engine_step_order_changes(tmp_path, monkeypatch, capsys):
    """The ranges come from the calls train_one_epoch makes; an engine that no longer makes them in the expected
    order (here: no GradScaler calls) must not yield a silently mislabelled profile: no profile, the reason, the
    timings kept, exit status 1."""
    import bench.bench_profile as bp

    def engine_without_scaler(step, n, loss_fn=None, ema=None, scaler=None):
        if loss_fn is not None:
            for _ in range(n):
                loss_fn(step.images.float(), step.targets)
                ema.update(step.model)
        return {}

    monkeypatch.setattr(bp, "engine_steps", engine_without_scaler)
    out = tmp_path / "p.json"
    assert bp.main(["--quick", "--skip_ultra", "--phases", "unfrozen", "--out", str(out)]) == 1
    entry = json.loads(out.read_text())["ours"]["unfrozen"]
    assert "profile" not in entry and entry["eager_step_ms"] > 0  # the timings are kept
    assert entry["profile_error"].startswith("RuntimeError: training.engine's step no longer calls loss_fn, "
                                             "scaler.scale, scaler.unscale_ and ema.update in this order")
    assert "ours, unfrozen: no profile: RuntimeError" in capsys.readouterr().out


def test_ceiling_step_with_a_compile_backend_trains_through_torch_compile():
    """bench_profile --compile (bench_train.build_ceiling_step's compile_backend): the step calls the compiled module,
    the EMA and optimizer keep the plain model's tensors, and a step changes the weights."""
    import torch

    from bench.bench_train import build_ceiling_step, engine_steps

    s = build_ceiling_step("n", 64, 2, False, "cpu", compile_backend="eager")
    assert type(s.model).__name__ == "OptimizedModule"
    before = s.model._orig_mod.head.cls[0][0].conv.weight.detach().clone()
    engine_steps(s, 1)
    assert not torch.equal(before, s.model._orig_mod.head.cls[0][0].conv.weight)
    assert s.ema.updates == 1
