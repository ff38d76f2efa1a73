"""experiments/_benchutil.machine_line: the header every speed table carries (which CPU, which instruction sets)."""
from _experiments import load_experiment


def test_machine_line_names_the_first_processor_and_its_features(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n\n"
        "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: Other\nflags\t\t: fpu amx_fp16\n")
    line = load_experiment("_benchutil").machine_line(str(info))
    assert line == ("Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143); avx2, avx512f, avx512_bf16, amx_bf16 "
                    "of avx2, avx512f, avx512_bf16, amx_bf16, amx_fp16")


def test_machine_line_without_cpuinfo_says_unknown(tmp_path):
    line = load_experiment("_benchutil").machine_line(str(tmp_path / "absent"))
    assert line.startswith("unknown CPU (family ?, model ?); none of avx2")
