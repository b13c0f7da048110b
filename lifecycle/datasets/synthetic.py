"""Realistic synthetic customer-support messages, made by our own code for the demo, the
tests and the benchmarks: a dozen intents, ambiguous phrasings, some label noise, customer
ids as groups, PII sprinkled in, and a few exact and near duplicates."""
import json
import random
from datetime import datetime, timedelta, timezone

INTENTS = {
    "order_status": ["where is my order {order}", "my package {order} still hasn't arrived", "can you track order {order} for me",
                     "it's been a week and order {order} is not here", "status of my delivery {order}?"],
    "refund_request": ["I want a refund for order {order}", "please refund my money, the item was broken",
                       "how do I get my money back for {order}", "refund me, I returned the parcel last week"],
    "cancel_order": ["cancel order {order} please", "I ordered by mistake, please cancel {order}",
                     "can I still cancel my order before it ships", "stop order {order}, I don't need it anymore"],
    "change_address": ["I moved, please change the delivery address for {order}", "update my shipping address",
                       "wrong address on order {order}, can you fix it", "ship {order} to my office instead"],
    "payment_failed": ["my card was declined at checkout", "payment failed but money left my account",
                       "why does my payment keep failing", "checkout error when paying with card {card}"],
    "account_locked": ["I'm locked out of my account", "too many login attempts and now I can't sign in",
                       "my account got blocked, email {email}", "unlock my account please"],
    "password_reset": ["how do I reset my password", "forgot my password, send a reset link to {email}",
                       "the reset link doesn't work", "can't change my password"],
    "product_question": ["does the {product} come in blue", "is the {product} waterproof",
                         "what size is the {product}", "does {product} work with my phone"],
    "complaint": ["this is the worst service I have ever had", "your courier threw my parcel over the fence",
                  "I've been waiting on hold for an hour", "very disappointed with the {product}"],
    "invoice_request": ["please send me an invoice for {order}", "I need a VAT invoice, my email is {email}",
                        "where can I download my invoice", "invoice for order {order} has the wrong company name"],
    "subscription_cancel": ["cancel my subscription", "stop charging my card {card} every month",
                            "how do I end my membership", "I don't want the premium plan anymore"],
    "technical_issue": ["the app crashes when I open my orders", "website shows an error 500 at checkout",
                        "I can't upload a photo of the damaged item", "the page keeps loading forever"],
}
# Phrasings that honestly fit two intents: the source of real disagreement between labelers.
AMBIGUOUS = [
    ("I want my money back and cancel the rest of the order", ("refund_request", "cancel_order")),
    ("I was charged twice, please fix it", ("payment_failed", "refund_request")),
    ("can't log in and the reset email never comes", ("account_locked", "password_reset")),
    ("the {product} arrived broken, this is unacceptable", ("complaint", "refund_request")),
    ("stop my monthly payment", ("subscription_cancel", "payment_failed")),
]
# Context people add to a message; most messages carry one or two, which is what keeps real
# support traffic from being a handful of templates.
CONTEXT = [
    "I ordered it on {day}.", "This is the second time I'm writing about this.", "I'm on the {plan} plan.",
    "It was meant as a gift for my {relative}.", "I paid with {method}.", "The tracking page says nothing useful.",
    "Your chat bot could not help me.", "I have been a customer for {years} years.", "I'm travelling until {day}.",
    "My {relative} placed the order for me.", "The box was {state} when it came.", "I need this sorted before {day}.",
    "I already emailed support yesterday.", "Please answer by email, I can't take calls at work.",
    "It's the {color} one, size {size}.", "I live in a flat, so the courier has to ring.",
]
# A sentence of free detail, combined from parts: thousands of variants, like real messages.
DETAIL_WHO = ["the driver", "my neighbour", "the app", "your website", "the parcel", "the invoice", "the agent",
              "the email", "my bank", "the courier", "the receipt", "the store", "the refund", "the label"]
DETAIL_WHAT = ["said something else", "showed a different price", "never mentioned this", "was left outside",
               "had the wrong name", "took three days", "looked damaged", "was charged twice", "got lost again",
               "asked for a code", "was not helpful", "kept timing out", "listed the wrong size", "came late"]
DETAIL_WHEN = ["yesterday", "last week", "this morning", "on friday", "twice now", "after lunch", "on my birthday",
               "during the sale", "before christmas", "at 6pm", "when I checked", "in march"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "the weekend", "the 3rd", "the 14th", "the 28th"]
OPENERS = ["", "", "", "hi, ", "hello, ", "hey there, ", "good morning, ", "urgent: ", "quick question: "]
CLOSERS = ["", "", "", " thanks", " thank you!", " asap please", " - regards", "!!", " cheers"]
PRODUCTS = ["trail jacket", "wireless earbuds", "coffee grinder", "yoga mat", "desk lamp", "phone case"]
NAMES = ["anna", "ben", "carla", "dev", "emma", "farid", "grace", "hiro", "ines", "jonas"]
DOMAINS = ["example.com", "mail.example.org", "inbox.example.net"]
PII_SUFFIXES = [
    " my email is {email}", " call me on +44 20 7946 {phone4}", " my card number is 4111 1111 1111 1111",
    " IBAN DE89 3704 0044 0532 0130 00", " reach me at {email} or +1 (415) 555-{phone4}",
]


def _fill(template, rng):
    return template.format(
        day=rng.choice(DAYS), plan=rng.choice(["basic", "plus", "premium", "family"]),
        relative=rng.choice(["mum", "dad", "sister", "brother", "partner", "friend", "colleague"]),
        method=rng.choice(["paypal", "a credit card", "apple pay", "a gift card", "bank transfer"]),
        years=rng.randint(2, 15), state=rng.choice(["crushed", "wet", "open", "torn", "fine"]),
        color=rng.choice(["black", "blue", "green", "grey", "red"]), size=rng.choice(["S", "M", "L", "XL", "42", "10"]),
        order=f"#{rng.randint(100000, 999999)}", product=rng.choice(PRODUCTS),
        email=f"{rng.choice(NAMES)}.{rng.randint(1, 99)}@{rng.choice(DOMAINS)}",
        card="4111 1111 1111 1111", phone4=f"{rng.randint(0, 9999):04d}",
    )


def _message(rng, pii_rate):
    if rng.random() < 0.06:
        template, labels = rng.choice(AMBIGUOUS)
        intent = rng.choice(labels)
    else:
        intent = rng.choice(list(INTENTS))
        template = rng.choice(INTENTS[intent])
    context = " ".join(_fill(c, rng) for c in rng.sample(CONTEXT, rng.choice([0, 1, 1, 2])))
    if rng.random() < 0.7:
        detail = f"{rng.choice(DETAIL_WHO).capitalize()} {rng.choice(DETAIL_WHAT)} {rng.choice(DETAIL_WHEN)}."
        context = f"{detail} {context}".strip()
    text = rng.choice(OPENERS) + _fill(template, rng) + rng.choice([". ", " "]) * bool(context) + context + rng.choice(CLOSERS)
    if rng.random() < pii_rate:
        text += _fill(rng.choice(PII_SUFFIXES), rng)
    return text, intent


def _near_copy(text, rng):
    """The same message with a small edit: a typo, changed case or punctuation."""
    edits = [lambda t: t.upper(), lambda t: t + "?", lambda t: t.replace(" ", "  ", 1), lambda t: t.rstrip("!.") + "."]
    return rng.choice(edits)(text)


def generate(rows, *, seed=7, noise=0.03, pii_rate=0.05, dup_rate=0.02, customers=None, start=None):
    """Yield dicts with text, label, customer_id, created_at and channel."""
    rng = random.Random(seed)
    customers = customers or max(10, rows // 4)
    start = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
    labels = list(INTENTS)
    recent = []
    for index in range(rows):
        if recent and rng.random() < dup_rate:
            text, intent = rng.choice(recent)
            text = text if rng.random() < 0.5 else _near_copy(text, rng)
        else:
            text, intent = _message(rng, pii_rate)
            recent = (recent + [(text, intent)])[-200:]
        if rng.random() < noise:
            intent = rng.choice(labels)  # label noise: what a tired annotator does
        yield {
            "text": text, "label": intent, "customer_id": f"C{rng.randint(1, customers):06d}",
            "created_at": (start + timedelta(minutes=index * 7 + rng.randint(0, 6))).isoformat(),
            "channel": rng.choice(["email", "chat", "web"]),
        }


def write_jsonl(path, rows, **options):
    with open(path, "w", encoding="utf-8") as out:
        for record in generate(rows, **options):
            out.write(json.dumps(record) + "\n")
