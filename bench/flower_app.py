"""The Flower side of bench/vs_flower.py: the same FedAvg workload in Flower's Ray simulation.

Runs in its own virtualenv (bench/.venv-flower, made by vs_flower.py; Flower is never a
dependency of raysim) and is started by vs_flower.py as

    bench/.venv-flower/bin/python bench/flower_app.py WORK_DIR

WORK_DIR holds what vs_flower.py exported from raysim: the training set, every device's shard,
the initial global model, the scenario and, per round, the devices raysim selected. A Flower
SuperNode stands for one device (node i = device i, `num_supernodes` = fleet size); the
strategy is Flower's own FedAvg (weighted by examples), told which nodes to train each round so
that both systems train the same devices with the same data, model, shuffles and SGD steps.
Per-round wall time is taken between the calls of Flower's server-side `evaluate_fn`, which
Flower makes before round 1 and after every round; it does no evaluation here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_CACHE: dict[str, Any] = {}


def _work(work_dir: str) -> dict[str, Any]:
    """The exported workload, loaded once per process (each Flower actor keeps its copy)."""
    if _CACHE.get("dir") == work_dir:
        return _CACHE
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from raysim.scenario.resolve import model_factory  # noqa: PLC0415
    from raysim.scenario.schema import parse_scenario  # noqa: PLC0415

    torch.set_num_threads(1)
    meta = json.loads((Path(work_dir) / "meta.json").read_text())
    z = np.load(Path(work_dir) / "work.npz")
    sc = parse_scenario(meta["scenario"])
    spec = model_factory(sc.model)(tuple(meta["input_shape"]), meta["num_classes"])
    _CACHE.clear()
    _CACHE.update(
        dir=work_dir, meta=meta, sc=sc, model=spec.build(),
        x=torch.from_numpy(z["x_train"]), y=torch.from_numpy(z["y_train"]),
        flat=z["shard_flat"], offsets=z["shard_offsets"],
        init={k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")},
        rounds={int(k[len("round/"):]): z[k].tolist() for k in z.files if k.startswith("round/")},
    )
    return _CACHE


def build_apps(work_dir: str):
    """ClientApp and ServerApp for the exported workload."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from _plain import plain_sgd  # noqa: PLC0415
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: PLC0415
    from flwr.clientapp import ClientApp  # noqa: PLC0415
    from flwr.serverapp import Grid, ServerApp  # noqa: PLC0415
    from flwr.serverapp.strategy import FedAvg  # noqa: PLC0415

    from raysim.seeding import torch_generator  # noqa: PLC0415

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = msg.content["config"]
        w = _work(str(cfg["work-dir"]))
        device, rnd = int(cfg["device-id"]), int(cfg["server-round"])
        tc = w["sc"].train
        model = w["model"]
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        rows = torch.from_numpy(w["flat"][w["offsets"][device]:w["offsets"][device + 1]])
        plain_sgd(model, w["x"][rows], w["y"][rows], tc.epochs, tc.batch_size, tc.lr,
                  torch_generator(w["sc"].seed, "train", rnd, device))
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": int(len(rows)) * tc.epochs})})
        return Message(content=content, reply_to=msg)

    class SameDevices(FedAvg):
        """Flower's FedAvg, training in each round the nodes of the devices raysim selected."""

        def configure_train(self, server_round, arrays, config, grid):
            nodes = sorted(grid.get_node_ids())
            devices = _work(work_dir)["rounds"][server_round]
            out = []
            for d in devices:
                c = ConfigRecord({**dict(config), "server-round": server_round, "device-id": int(d)})
                out.append(Message(content=RecordDict({"arrays": arrays, "config": c}),
                                   message_type=MessageType.TRAIN, dst_node_id=nodes[d]))
            return out

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        w = _work(work_dir)
        meta = w["meta"]
        rounds = int(meta["rounds"])
        stamps: list[float] = []
        final: dict[str, Any] = {}

        def evaluate_fn(rnd: int, arrays: ArrayRecord):
            stamps.append(time.perf_counter())
            if rnd == rounds:
                final.update(arrays.to_torch_state_dict())
            return None

        strategy = SameDevices(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=meta["fleet"],
                               min_train_nodes=1, weighted_by_key="num-examples")
        init = ArrayRecord({k: torch.from_numpy(v.copy()) for k, v in w["init"].items()})
        strategy.start(grid=grid, initial_arrays=init, num_rounds=rounds, evaluate_fn=evaluate_fn,
                       train_config=ConfigRecord({"work-dir": work_dir}))
        np.savez(Path(work_dir) / "flower-final.npz", **{k: v.numpy() for k, v in final.items()})
        (Path(work_dir) / "flower-rounds.json").write_text(json.dumps({
            "t_first_eval": stamps[0], "round_s": [b - a for a, b in zip(stamps, stamps[1:])]}))

    return client, server


def main(argv: list[str]) -> int:
    work_dir = str(Path(argv[0]).resolve())
    meta = json.loads((Path(work_dir) / "meta.json").read_text())
    from flwr.simulation import run_simulation  # noqa: PLC0415

    client, server = build_apps(work_dir)
    t0 = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=meta["fleet"],
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": meta["num_cpus"], "include_dashboard": False}})
    res = json.loads((Path(work_dir) / "flower-rounds.json").read_text())
    res["t_start"] = t0
    res["start_s"] = res["t_first_eval"] - t0
    (Path(work_dir) / "flower-rounds.json").write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    # Imported under its own name so that Ray's actors can find the client code by reference.
    sys.path[:0] = [str(HERE), str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])
    import flower_app  # noqa: E402

    raise SystemExit(flower_app.main(sys.argv[1:]))
