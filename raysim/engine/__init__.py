"""The round loop and its parts; takes objects, knows no Ray (docs/engine.md).

- `loop`: the one round loop (`RoundLoop`), the `Mode` contract, the global model (`Global`);
- `loops`: `round_loop`, which builds a run's loop from named `Parts`;
- modes: `flat` (synchronous rounds), `asynchronous` (FedBuff / FedAsync on the event
  `events` timeline), `hierarchy` (synchronous cloud rounds through gateways), `gateway_async`
  (an asynchronous cloud over gateways);
- shared parts: `device_round` (select, assign, plan, settle, device rows), `versions`,
  `evaluation`, `recording` (the round record), `setup` (the world and the loop's settings);
- policies and models: `selection`, `assignment`, `deadlines`, `clock`, `cost`, `energy`,
  `battery`, `topology`, `device_state`, `callbacks`.
"""
