"""A minimal subscriber to motionwatch's live feed, in plain Python (needs only pyzmq).

    python examples/subscriber.py [ENDPOINT] [--count N]

Prints one line per message: per movie its series, tilt and drift; notes lost messages (gaps in
``seq``) and daemon restarts (a new ``session``). The message schema is in docs/zmq.md.
"""

import argparse
import json

import zmq


def describe(topic, msg):
    if topic == "movie":
        drift = msg["drift"]
        return (f"{msg['name']}  series {msg['series']}  tilt {msg['tilt_deg']}  "
                f"drift {drift['total_A']:.1f} Å (largest jump {drift['max_frame_jump_A']:.1f} Å)")
    if topic == "series":
        return f"series {msg['series']} {msg['event']}: {msg['n_done']} done"
    if topic == "heartbeat":
        return f"alive: {msg['done']} done, {msg['failed']} failed, backlog {msg['backlog']}"
    if topic == "warning":
        return f"WARNING {msg['message']}"
    if topic == "error":
        return f"ERROR {msg['path']}: {msg['reason']}"
    if topic == "state":
        return "state: " + ", ".join(f"{s['series']} ({len(s['tilts'])} tilts)" for s in msg["series"])
    return topic


def main():
    parser = argparse.ArgumentParser(description="Print motionwatch's live feed.")
    parser.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:5557")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (0: never)")
    args = parser.parse_args()

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")  # every topic, so gaps in seq mean lost messages
    sub.connect(args.endpoint)
    session, last_seq, received = None, None, 0
    while args.count == 0 or received < args.count:
        topic, body = sub.recv_multipart()
        msg = json.loads(body)
        received += 1
        if msg["session"] != session:
            if session is not None:
                print("-- the daemon restarted")
            session, last_seq = msg["session"], None
        if last_seq is not None and msg["seq"] > last_seq + 1:
            print(f"-- missed {msg['seq'] - last_seq - 1} messages")
        last_seq = msg["seq"]
        print(f"{msg['time']}  #{msg['seq']}  {describe(topic.decode(), msg)}", flush=True)
    sub.close()


if __name__ == "__main__":
    main()
