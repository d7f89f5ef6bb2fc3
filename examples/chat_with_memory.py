"""A chat from Python whose memory outlives the program: the TTT state is saved after every
turn and loaded at the next start, so a conversation can be picked up days later.

    python examples/chat_with_memory.py "Hello!" "Tell me a story about a cat."
    python examples/chat_with_memory.py --memory me.mem "What did we talk about?"   # continues

The interactive version of the same is `bitttt chat --memory me.mem`.
"""
import argparse
import os

import bitttt


def chat_turn(session, message: str, max_tokens: int) -> str:
    """Feed one user message with the chat roles and return the answer (the memory keeps both)."""
    tok = session.model.tokenizer
    stop = (tok.special_ids["<|user|>"], tok.special_ids["<|system|>"])
    session.feed("<|user|>" + message + "<|assistant|>")
    return session.generate(max_tokens=max_tokens, temperature=0.7, seed=len(session.history), stop_ids=stop)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("messages", nargs="*", default=["Hello!", "Tell me a story about a cat."])
    ap.add_argument("-m", "--model", default="tinystories")
    ap.add_argument("--memory", default="chat_memory.mem",
                    help="memory file: loaded when it exists, saved after each turn")
    ap.add_argument("-n", "--max-tokens", type=int, default=48)
    args = ap.parse_args()

    model = bitttt.load(args.model)
    s = model.session()
    if os.path.exists(args.memory):
        s.load_memory(args.memory)
        print(f"[memory {args.memory}: {s.state.n_tokens} tokens read in earlier chats]")
    else:
        print(f"[new memory; it will be saved to {args.memory}]")
    for msg in args.messages:
        print(f"> {msg}")
        print(chat_turn(s, msg, args.max_tokens).strip())
        s.save_memory(args.memory, note="examples/chat_with_memory.py")  # atomic: never half-written
    print(f"[memory saved to {args.memory}: {s.state.n_tokens} tokens read in all]")


if __name__ == "__main__":
    main()
