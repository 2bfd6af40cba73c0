# The product description's "building providers programmatically" example, with its
# bootstrap address pointed at a node on this machine (start one with
# `knarr serve --port 9100 --bootstrap ""`).
import asyncio

from knarr.dht.node import DHTNode


async def main():
    node = DHTNode("0.0.0.0", 9000)
    await node.start()
    await node.join(["127.0.0.1:9100"])

    # Register skills
    async def echo(data): return data
    async def upper(data): return {"text": data["text"].upper()}
    node.register_handler("echo", echo)
    node.register_handler("upper", upper)
    await node.announce({
        "name": "echo", "version": "1.0.0", "description": "Echo",
        "tags": ["example"], "input_schema": {"text": "string"},
        "output_schema": {"text": "string"}
    })

    # Call your own skills locally
    result = await node.call_local("upper", {"text": "hello"})
    print(result)  # {"text": "HELLO"}

    # Keep running to serve remote requests
    await asyncio.Event().wait()

asyncio.run(main())
