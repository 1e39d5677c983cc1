"""aio-pika against a real node: publish/consume, confirms, RPC, reject/requeue, get."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_publish_consume_with_confirms(node):
    async def main():
        conn = await aio_pika.connect_robust(node.url)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue("aio_work", durable=True)
            for i in range(100):
                await ch.default_exchange.publish(
                    aio_pika.Message(str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key="aio_work")
            got = []
            async with q.iterator() as it:
                async for msg in it:
                    async with msg.process():
                        got.append(int(msg.body))
                    if len(got) == 100:
                        break
            assert got == list(range(100))
            await q.delete()
    run(main())


def test_topic_and_fanout(node):
    async def main():
        conn = await aio_pika.connect(node.url)
        async with conn:
            ch = await conn.channel()
            x = await ch.declare_exchange("aio_topic", aio_pika.ExchangeType.TOPIC)
            q = await ch.declare_queue(exclusive=True)
            await q.bind(x, "a.*.c")
            await x.publish(aio_pika.Message(b"hit"), "a.b.c")
            await x.publish(aio_pika.Message(b"miss"), "a.b.d")
            m = await q.get(timeout=5)
            assert m.body == b"hit"
            await m.ack()
            assert await q.get(fail=False) is None
            await x.delete()
    run(main())


def test_rpc_round_trip(node):
    async def main():
        conn = await aio_pika.connect(node.url)
        async with conn:
            ch = await conn.channel()
            req_q = await ch.declare_queue("aio_rpc", auto_delete=True)

            async def server(msg: aio_pika.IncomingMessage):
                async with msg.process():
                    await ch.default_exchange.publish(
                        aio_pika.Message(msg.body.upper(), correlation_id=msg.correlation_id),
                        routing_key=msg.reply_to)

            await req_q.consume(server)
            reply_q = await ch.declare_queue(exclusive=True)
            fut = asyncio.get_running_loop().create_future()

            async def on_reply(msg: aio_pika.IncomingMessage):
                async with msg.process():
                    if msg.correlation_id == "42":
                        fut.set_result(msg.body)

            await reply_q.consume(on_reply)
            await ch.default_exchange.publish(
                aio_pika.Message(b"ping", reply_to=reply_q.name, correlation_id="42"), "aio_rpc")
            assert await asyncio.wait_for(fut, 5) == b"PING"
    run(main())


def test_reject_requeue_redelivers(node):
    async def main():
        conn = await aio_pika.connect(node.url)
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue(exclusive=True)
            await ch.default_exchange.publish(aio_pika.Message(b"again"), q.name)
            m = await q.get(timeout=5)
            assert not m.redelivered
            await m.reject(requeue=True)
            m = await q.get(timeout=5)
            assert m.redelivered and m.body == b"again"
            await m.nack(requeue=False)
            assert await q.get(fail=False) is None
    run(main())


def test_channel_error_reported(node):
    async def main():
        conn = await aio_pika.connect(node.url)
        async with conn:
            ch = await conn.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await ch.declare_queue("aio_missing", passive=True)
            ch2 = await conn.channel()  # the connection survives
            q = await ch2.declare_queue(exclusive=True)
            assert q.name.startswith("amq.gen-")
    run(main())
