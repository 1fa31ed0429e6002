"""The second held-out evaluation set of the intent models: new wordings, never trained on.

``UNSEEN`` holds, for every one of the 31 intents of ``intents_text.py``, five wordings written by
hand for this set (not generated from the training templates): other verbs ("kill the lights"),
indirect requests ("it's too hot in the kitchen"), politeness and filler ("could you ... for me").
None equals a training phrasing (``check()``, run by ``make_intents.py --unseen-set`` and by
``python training/data/intents_unseen.py``).

``OOV_NEAR`` / ``OOV_FAR`` are commands that are none of the 31 intents: the near ones share words
or a device class with the intents (radio, fan, blanket), the far ones do not. They measure what
the ``threshold`` of docs/api.md catches.

The audio (``make_intents.py --unseen-set``) is spoken by the held-out voices only (tts.HELDOUT),
each (wording, voice) clip under one condition (clean, tempo 0.9, tempo 1.1, room reverberation,
background noise at 20 dB SNR), out-of-vocabulary commands clean.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import intents_text  # noqa: E402

UNSEEN = {
    "activate|lights|none": [
        "could you turn the lights on for me",
        "it is too dark in here, lights please",
        "please switch all the lights on",
        "give me some light",
        "i need the lights on",
    ],
    "activate|lights|kitchen": [
        "can you put the kitchen lights on",
        "i can't see anything in the kitchen, turn the light on",
        "please light up the kitchen",
        "switch the kitchen light on for me",
        "could you turn on the lights in the kitchen please",
    ],
    "activate|lights|bedroom": [
        "can you turn the bedroom lights on",
        "please light up the bedroom",
        "i need some light in the bedroom",
        "could you switch on the lights in my bedroom",
        "bedroom light on please",
    ],
    "activate|lights|washroom": [
        "turn on the light in the washroom please",
        "can you light up the washroom",
        "switch the washroom light on for me",
        "i need the lights on in the washroom",
        "could you put the washroom lights on",
    ],
    "deactivate|lights|none": [
        "kill the lights",
        "could you turn the lights off for me",
        "please switch all the lights off",
        "i don't need the lights any more",
        "lights out please",
    ],
    "deactivate|lights|kitchen": [
        "kill the lights in the kitchen",
        "can you switch the kitchen lights off",
        "please turn the light off in the kitchen",
        "nobody is in the kitchen, turn the lights off",
        "could you shut off the kitchen lights",
    ],
    "deactivate|lights|bedroom": [
        "kill the bedroom lights",
        "please turn the light off in my bedroom",
        "can you switch off the lights in the bedroom",
        "i'm going to sleep, turn off the bedroom lights",
        "bedroom light off please",
    ],
    "deactivate|lights|washroom": [
        "kill the lights in the washroom",
        "can you turn the washroom light off",
        "please switch the lights off in the washroom",
        "shut off the washroom lights",
        "nobody is in the washroom, turn the lights off",
    ],
    "increase|volume|none": [
        "i can't hear it, turn it up",
        "make the sound louder",
        "can you raise the volume a bit",
        "turn it up please",
        "a little louder",
    ],
    "decrease|volume|none": [
        "it's too loud, turn it down",
        "make the sound quieter",
        "can you lower the volume a bit",
        "turn it down please",
        "not so loud please",
    ],
    "increase|heat|none": [
        "i'm cold, turn the heat up",
        "could you make it a bit warmer",
        "raise the temperature please",
        "it's freezing in here",
        "can you turn the heating up a little",
    ],
    "increase|heat|kitchen": [
        "could you make it a bit warmer in the kitchen",
        "the kitchen is freezing, turn up the heat",
        "raise the temperature in the kitchen",
        "warm up the kitchen please",
        "can you turn the heat up in the kitchen",
    ],
    "increase|heat|bedroom": [
        "could you make it a bit warmer in the bedroom",
        "it's cold in the bedroom",
        "raise the bedroom temperature please",
        "warm up the bedroom",
        "turn the bedroom heating up a little",
    ],
    "increase|heat|washroom": [
        "make it a bit warmer in the washroom",
        "the washroom is too cold",
        "raise the temperature in the washroom please",
        "can you warm up the washroom",
        "turn up the washroom heating",
    ],
    "decrease|heat|none": [
        "it's too hot in here",
        "could you make it a bit cooler",
        "lower the temperature please",
        "can you turn the heat down a little",
        "i'm too warm, turn down the heating",
    ],
    "decrease|heat|kitchen": [
        "it's too hot in the kitchen",
        "could you cool down the kitchen",
        "lower the temperature in the kitchen please",
        "turn the kitchen heating down a bit",
        "make it a little cooler in the kitchen",
    ],
    "decrease|heat|bedroom": [
        "the bedroom is too warm",
        "cool down the bedroom please",
        "lower the bedroom temperature",
        "can you turn down the heat in my bedroom",
        "make it a little cooler in the bedroom",
    ],
    "decrease|heat|washroom": [
        "the washroom is too hot",
        "cool the washroom down please",
        "lower the temperature in the washroom",
        "turn down the washroom heating a bit",
        "make it a little cooler in the washroom",
    ],
    "activate|music|none": [
        "play me a song",
        "i want to listen to some music",
        "can you put some music on",
        "let's have some music",
        "start playing some songs",
    ],
    "deactivate|music|none": [
        "that's enough music",
        "please stop the song",
        "can you turn the music off",
        "no more music please",
        "silence the music",
    ],
    "activate|lamp|none": [
        "could you turn the lamp on for me",
        "please put the lamp on",
        "i need the lamp on",
        "can you turn on the reading lamp",
        "switch the desk lamp on",
    ],
    "deactivate|lamp|none": [
        "could you turn the lamp off for me",
        "turn that lamp off please",
        "i don't need the lamp any more",
        "can you switch the reading lamp off",
        "kill the lamp",
    ],
    "bring|newspaper|none": [
        "can you bring me today's paper",
        "i'd like to read the newspaper",
        "could you fetch me the paper",
        "hand me the newspaper please",
        "where's my newspaper, bring it here",
    ],
    "bring|juice|none": [
        "i'm thirsty, bring me some juice",
        "could i have a glass of juice",
        "can you fetch me a juice please",
        "pour me some juice",
        "i'd like some orange juice",
    ],
    "bring|socks|none": [
        "my feet are cold, bring me my socks",
        "could you fetch my socks please",
        "can i have my socks",
        "hand me a pair of socks",
        "where are my socks, bring them here",
    ],
    "bring|shoes|none": [
        "i'm going out, bring me my shoes",
        "could you fetch my shoes please",
        "can i have my shoes",
        "hand me my shoes",
        "bring my shoes over here",
    ],
    "change language|chinese|none": [
        "i would like chinese please",
        "can you speak chinese",
        "put everything in chinese",
        "i'd prefer chinese",
        "change it to chinese",
    ],
    "change language|korean|none": [
        "i would like korean please",
        "can you talk to me in korean",
        "put everything in korean",
        "i'd rather use korean",
        "make it korean",
    ],
    "change language|english|none": [
        "i would like english please",
        "can you speak english",
        "go back to english",
        "i don't understand, english please",
        "set everything to english",
    ],
    "change language|german|none": [
        "i would like german please",
        "can you speak german",
        "put everything in german",
        "i'd prefer german",
        "switch everything to german",
    ],
    "change language|none|none": [
        "i want to change the language",
        "can i use another language",
        "can you speak a different language",
        "open the language menu",
        "i'd like another language please",
    ],
}

# not one of the 31 intents; "near": shares words or a device class with them
OOV_NEAR = [
    "turn on the radio",
    "turn off the television",
    "switch on the fan",
    "turn up the air conditioning",
    "open the garage door",
    "close the kitchen window",
    "lock the bedroom door",
    "turn on the oven",
    "start the washing machine",
    "bring me a blanket",
    "fetch my glasses",
    "get me my keys",
    "bring me a cup of coffee",
    "play the next episode",
    "turn on the sprinklers",
    "open the curtains in the bedroom",
    "close the blinds",
    "start the dishwasher",
    "change the channel",
    "turn the page",
]
OOV_FAR = [
    "what time is it",
    "order a pizza",
    "what's the weather like tomorrow",
    "set an alarm for seven",
    "call my mother",
    "read me the news",
    "how tall is mount everest",
    "add milk to the shopping list",
    "set a timer for ten minutes",
    "water the plants",
    "feed the cat",
    "tell me a joke",
    "what is on my calendar today",
    "send a message to john",
    "who won the game last night",
    "book a table for two",
    "take a picture",
    "remind me to buy bread",
    "call a taxi",
    "how do you spell necessary",
    "what's the capital of france",
    "cancel my meeting",
    "good night",
    "thank you very much",
    "wake me up at eight",
]

CONDITIONS = ["clean", "tempo 0.9", "tempo 1.1", "reverb", "noise 20 dB"]


def unseen():
    """[(label index, label, text)] in label order of intents_text.intents()."""
    its = intents_text.intents()
    labels = [intents_text.label(a, o, l) for a, o, l, _ in its]
    assert sorted(UNSEEN) == sorted(labels), set(UNSEEN) ^ set(labels)
    return [(i, lab, t) for i, lab in enumerate(labels) for t in UNSEEN[lab]]


def oov():
    """[(kind, text)], kind "near" or "far"."""
    return [("near", t) for t in OOV_NEAR] + [("far", t) for t in OOV_FAR]


def _norm(t):
    return " ".join(t.lower().replace(",", " ").split())


def check():
    """No new wording or OOV command equals a training phrasing (after lower-casing and dropping
    commas), none is repeated, at least 4 wordings per intent and 40 OOV commands."""
    train = {_norm(p) for *_, phr in intents_text.intents() for p in phr}
    seen = set()
    for lab, phr in UNSEEN.items():
        assert len(phr) >= 4, lab
        for p in phr:
            n = _norm(p)
            assert n not in train, f"unseen wording {p!r} ({lab}) is a training phrasing"
            assert n not in seen, f"{p!r} repeated"
            seen.add(n)
    assert len(OOV_NEAR) + len(OOV_FAR) >= 40
    for _, t in oov():
        n = _norm(t)
        assert n not in train and n not in seen, f"OOV command {t!r} is a phrasing of an intent"
        seen.add(n)
    return len(unseen()), len(oov())


if __name__ == "__main__":
    n, m = check()
    print(f"{n} unseen wordings for {len(UNSEEN)} intents, {m} out-of-vocabulary commands: check ok")
