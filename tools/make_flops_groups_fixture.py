"""The FLOPs groups of SN-Netv2's resource-constrained sampling for DeiT3-S/L, as a test fixture.

Reads the official configs and FLOPs (tests/fixtures/vectors/stitch_configs_deit3_s_l_v2.json: the
134 trained configs with the FLOPs of the official FLOPs file) and writes
tests/fixtures/flops_groups_deit3_s_l.json: the groups for the official gap (1.0 GFLOPs) and, for
the linear ramp k = 3, each group's probability. The rule (shared/spec/snnet-spec.md §11.6):
configs by increasing FLOPs (ties in file order); a config more than `gap` GFLOPs from the current
group's first config (0 before any) starts a new group; each group sorted by id; with a ramp k,
group g (0-based) weighs g / k + 1 / G, normalised.

    python3 tools/make_flops_groups_fixture.py
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTOR = ROOT / "tests/fixtures/vectors/stitch_configs_deit3_s_l_v2.json"
OUT = ROOT / "tests/fixtures/flops_groups_deit3_s_l.json"


def groups_of(flops_by_id, gap_gflops):
    groups, current, reference = [], [], 0.0
    for cfg_id, flops in sorted(flops_by_id.items(), key=lambda item: item[1]):
        if abs(flops / 1e9 - reference) > gap_gflops:
            if current:
                groups.append(current)
            current, reference = [], flops / 1e9
        current.append(cfg_id)
    groups.append(current)
    return [sorted(g) for g in groups]


def ramp(count, k):
    weights = [g / k + 1 / count for g in range(count)]
    return [w / sum(weights) for w in weights]


def main():
    vector = json.loads(VECTOR.read_text())
    flops = {c["cfg_id"]: c["reported"]["flops"] for c in vector["configs"] if "reported" in c}
    assert sorted(flops) == sorted(vector["trained_ids"])
    groups = groups_of(flops, 1.0)
    fixture = {
        "source": "tools/make_flops_groups_fixture.py from " + VECTOR.name,
        "flops_gap_gflops": 1.0,
        "groups": groups,
        "ramp_k": 3.0,
        "ramp_probabilities": ramp(len(groups), 3.0),
    }
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"{len(groups)} groups of {sum(map(len, groups))} configs -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
