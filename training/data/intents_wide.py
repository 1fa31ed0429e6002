"""A wide training grammar for the 31 FSC-style intents (issue 11).

Written from general knowledge of how people phrase smart-home / device commands (synonyms of
every action, object and location, polite frames, fillers, fronted locations, indirect
phrasings that are unambiguous in FSC semantics), WITHOUT reading the held-out new wordings of
``intents_unseen.py`` or their results. ``sample()`` draws a stratified set of distinct
sentences (the same number per intent), always including the 199 phrasings of
``intents_text.py``; ``drop_heldout()`` removes any sentence that *equals* a held-out wording or
out-of-vocabulary command (it only counts them, it never prints them).

    python training/data/intents_wide.py            # counts per intent + a few random examples
"""

import random
import re

import intents_text

LOCS = {
    "kitchen": ["kitchen"],
    "bedroom": ["bedroom"],
    "washroom": ["washroom", "washroom", "bathroom"],
}
LANG_NAMES = {
    "chinese": ["chinese", "chinese", "mandarin"],
    "korean": ["korean"],
    "english": ["english"],
    "german": ["german"],
}

# -- verb frames -------------------------------------------------------------------------------
# "V": imperative cores (first word a verb in its base form); they take polite frames.
POLITE = ["", "", "", "", "please ", "could you ", "could you please ", "can you ", "can you please ",
          "would you ", "would you please ", "will you ", "will you please ", "i'd like you to ",
          "i want you to ", "i need you to ", "go ahead and ", "just ", "please just ",
          "could you just ", "can you just ", "hey could you ", "would you kindly ",
          "i was wondering if you could ", "do me a favor and ", "you can ", "okay now ",
          "can you go ahead and ", "would it be possible to "]
GERUND_FRAMES = ["would you mind ", "do you mind ", "how about ", "would you mind just "]
SUFFIX = ["", "", "", "", "", " please", " please", " for me", " for me please", " now", " right now",
          " thanks", " thank you", " if you can", " if you don't mind", " real quick", " quickly",
          " when you get a chance", " now please", " thanks a lot"]
FILLERS = ["", "", "", "", "", "", "um ", "uh ", "so ", "okay ", "hey ", "well ", "alright ",
           "hmm ", "oh ", "um so ", "okay so ", "right ", "erm ", "yeah ", "uh hey ", "hey there ",
           "excuse me ", "listen ", "hello ", "hi "]

IRREG = {"put": "putting", "shut": "shutting", "cut": "cutting", "get": "getting", "set": "setting",
         "stop": "stopping", "dim": "dimming", "grab": "grabbing", "flip": "flipping",
         "plug": "plugging", "pop": "popping", "bump": "bumping", "drop": "dropping",
         "go": "going", "run": "running", "let": "letting"}


def gerund(v):
    if v in IRREG:
        return IRREG[v]
    if v.endswith("ie"):
        return v[:-2] + "ying"
    if v.endswith("e") and not v.endswith("ee"):
        return v[:-1] + "ing"
    return v + "ing"


def _ing(core):
    w = core.split(" ", 1)
    return gerund(w[0]) + (" " + w[1] if len(w) > 1 else "")


# -- slot vocabularies -------------------------------------------------------------------------
LIGHT_OBJ = ["the lights", "the lights", "the light", "lights", "the lighting", "all the lights",
             "the overhead lights", "the ceiling lights", "the main lights", "the big light"]
LIGHT_ON_V = ["turn on {O}", "switch on {O}", "put on {O}", "flip on {O}", "turn {O} on",
              "switch {O} on", "put {O} on", "flick on {O}", "flick {O} on", "power on {O}",
              "activate {O}", "start {O}", "get {O} on", "put {O} back on", "turn {O} back on"]
LIGHT_OFF_V = ["turn off {O}", "switch off {O}", "shut off {O}", "put out {O}", "kill {O}",
               "cut {O}", "power off {O}", "turn {O} off", "switch {O} off", "shut {O} off",
               "flick off {O}", "flick {O} off", "deactivate {O}", "turn out {O}", "turn {O} out",
               "put {O} out", "get {O} off", "shut down {O}", "disable {O}", "stop {O}"]
LIGHT_ON_N = ["lights on", "light on", "lights on please", "the lights on", "let there be light",
              "some light please", "on with the lights"]
LIGHT_OFF_N = ["lights off", "light off", "lights out", "the lights off", "no lights",
               "no more lights", "lights off please", "off with the lights", "lights out please"]
LIGHT_ON_D = ["i want the lights on", "i'd like the lights on", "i need the lights on",
              "i need some light", "i need more light", "i want some light", "it's too dark",
              "it's so dark", "it is too dark", "it's really dark", "i can't see anything it's dark",
              "i'd like some light", "we need some light", "give me some light", "light it up",
              "let's have the lights on", "can we have the lights on", "can i get some light",
              "could we get some light", "the lights should be on", "i want light"]
LIGHT_OFF_D = ["i want the lights off", "i'd like the lights off", "i need the lights off",
               "it's too bright", "it's way too bright", "it is too bright", "i don't need the lights",
               "i don't need the lights anymore", "we don't need the lights", "the lights can go off",
               "let's have the lights off", "can we have the lights off", "i'm going to sleep lights off",
               "no need for the lights", "the lights should be off", "enough light"]

LOC_LIGHT_ON = ["{V} in the {L}", "in the {L} {V}", "{L} {V}"]
HEAT_OBJ = ["the heat", "the heat", "the heating", "the temperature", "the temperature",
            "the thermostat", "the heater", "the radiator"]
HEAT_UP_V = ["turn up {O}", "turn {O} up", "raise {O}", "increase {O}", "bump up {O}",
             "bump {O} up", "crank up {O}", "crank {O} up", "boost {O}", "put {O} up",
             "push up {O}", "push {O} up", "bring up {O}", "bring {O} up", "set {O} higher",
             "make {O} higher", "put up {O}", "up {O}", "warm up {O}", "nudge {O} up",
             "jack up {O}", "turn {O} up a bit", "raise {O} a little", "increase {O} a bit",
             "hike up {O}"]
HEAT_DOWN_V = ["turn down {O}", "turn {O} down", "lower {O}", "decrease {O}", "reduce {O}",
               "drop {O}", "bring down {O}", "bring {O} down", "cut {O}", "cut back {O}",
               "put {O} down", "set {O} lower", "make {O} lower", "knock down {O}",
               "knock {O} down", "dial down {O}", "dial {O} down", "lower {O} a bit",
               "turn {O} down a little", "decrease {O} a bit", "cut down {O}", "ease off {O}",
               "take {O} down", "drop {O} a bit", "reduce {O} a little"]
HEAT_UP_LOCV = ["heat up the {L}", "warm up the {L}", "warm the {L} up", "heat the {L} up",
                "make the {L} warmer", "make the {L} hotter", "get the {L} warmer",
                "make it warmer in the {L}", "make it hotter in the {L}", "warm the {L}"]
HEAT_DOWN_LOCV = ["cool down the {L}", "cool the {L} down", "make the {L} cooler",
                  "make the {L} colder", "make it cooler in the {L}", "make it colder in the {L}",
                  "cool off the {L}", "get the {L} cooler", "cool the {L}", "chill the {L}"]
HEAT_UP_NV = ["make it warmer", "make it hotter", "warm it up", "heat it up", "warm things up",
              "make the room warmer", "warm up the room", "heat up the room", "warm up the house",
              "heat the place up"]
HEAT_DOWN_NV = ["make it cooler", "make it colder", "cool it down", "cool things down",
                "make the room cooler", "cool down the room", "cool down the house",
                "cool the place down"]
HEAT_UP_N = ["heat up", "more heat", "warmer please", "heating up", "temperature up",
             "heat up please", "warmer", "a bit warmer", "more heating", "hotter please"]
HEAT_DOWN_N = ["heat down", "less heat", "cooler please", "heating down", "temperature down",
               "heat down please", "cooler", "a bit cooler", "less heating", "colder please"]
HEAT_UP_D = ["it's too cold", "it's freezing", "i'm cold", "i'm freezing", "it's so cold",
             "it is really cold", "it's chilly", "i'm a bit cold", "it's cold", "i'm so cold",
             "i want it warmer", "i'd like it warmer", "i need more heat", "i want more heat",
             "it's too chilly", "it's freezing cold", "i'm chilly"]
HEAT_DOWN_D = ["it's too hot", "it's too warm", "i'm hot", "i'm too hot", "it's boiling",
               "it's so hot", "it is really hot", "it's roasting", "i'm sweating", "it's stuffy",
               "i want it cooler", "i'd like it cooler", "i need less heat", "it's way too hot",
               "i'm boiling", "it's too stuffy", "it's warm"]
HEAT_UP_LOC_D = ["it's too cold in the {L}", "it's freezing in the {L}", "the {L} is too cold",
                 "the {L} is freezing", "the {L} is cold", "it's chilly in the {L}",
                 "i want the {L} warmer", "the {L} needs more heat", "the {L} is so cold",
                 "it's cold in the {L}", "i'd like the {L} warmer"]
HEAT_DOWN_LOC_D = ["it's too hot in the {L}", "it's too warm in the {L}", "the {L} is too hot",
                   "the {L} is boiling", "the {L} is too warm", "it's stuffy in the {L}",
                   "i want the {L} cooler", "the {L} needs less heat", "the {L} is so hot",
                   "it's hot in the {L}", "i'd like the {L} cooler"]
VOL_OBJ = ["the volume", "the volume", "the sound", "the audio", "the speaker volume",
           "the volume level"]
VOL_UP_V = ["turn up {O}", "turn {O} up", "raise {O}", "increase {O}", "pump up {O}",
            "crank up {O}", "crank {O} up", "bump up {O}", "bump {O} up", "boost {O}",
            "put {O} up", "push {O} up", "bring {O} up", "up {O}", "turn {O} up a bit",
            "increase {O} a little", "raise {O} a bit", "make the music louder", "make it louder",
            "make it a bit louder", "make the sound louder", "make that louder", "speak up",
            "speak louder", "play it louder", "play louder", "turn the music up",
            "turn up the music", "make everything louder"]
VOL_DOWN_V = ["turn down {O}", "turn {O} down", "lower {O}", "decrease {O}", "reduce {O}",
              "drop {O}", "bring {O} down", "bring down {O}", "cut {O}", "knock {O} down",
              "dial {O} down", "dial down {O}", "put {O} down", "turn {O} down a bit",
              "lower {O} a little", "decrease {O} a bit", "make the music quieter",
              "make it quieter", "make it a bit quieter", "make the sound quieter",
              "make that quieter", "make it softer", "make it less loud", "speak more quietly",
              "speak softer", "play it quieter", "play it softer", "turn the music down",
              "turn down the music", "keep it down", "quiet it down", "tone it down", "hush"]
VOL_UP_N = ["volume up", "louder", "louder please", "more volume", "a bit louder",
            "volume up please", "sound up", "a little louder", "much louder", "louder louder",
            "up the volume", "more sound"]
VOL_DOWN_N = ["volume down", "quieter", "quieter please", "less volume", "a bit quieter",
              "volume down please", "sound down", "a little quieter", "softer please",
              "not so loud", "less loud", "lower volume", "less noise"]
VOL_UP_D = ["i can't hear anything", "i can't hear it", "i can't hear that", "i can barely hear it",
            "it's too quiet", "it's way too quiet", "i can't hear the music", "i can hardly hear",
            "i want it louder", "i'd like it louder", "the volume is too low", "it's not loud enough",
            "i need more volume", "the sound is too low", "it's too soft", "i can't hear you"]
VOL_DOWN_D = ["it's too loud", "it's way too loud", "that's too loud", "the music is too loud",
              "i want it quieter", "i'd like it quieter", "the volume is too high",
              "my ears hurt", "it's really loud", "the sound is too loud", "it's so loud",
              "that's way too loud", "the volume is too loud", "it's deafening"]
MUSIC_OBJ = ["music", "some music", "the music", "a song", "some songs", "some tunes",
             "my music", "my playlist", "a playlist", "something", "a tune", "some background music",
             "some good music"]
MUSIC_ON_V = ["play {O}", "play {O}", "start {O}", "put on {O}", "turn on the music",
              "switch on the music", "start playing {O}", "start the music", "put {O} on",
              "turn the music on", "switch the music on", "resume the music", "resume playing",
              "get {O} going", "queue up {O}", "start the playlist", "fire up {O}", "throw on {O}",
              "begin playing {O}", "let {O} play", "play me {O}"]
MUSIC_ON_N = ["music on", "music please", "some music please", "music", "music time",
              "let's have some music", "tunes please", "play time music", "music now"]
MUSIC_ON_D = ["i want to listen to music", "i'd like to hear some music", "i want some music",
              "i feel like music", "let's listen to some music", "i'd like some music",
              "i want to hear a song", "i'd love some music", "let's hear some music",
              "it's too quiet put some music on", "can we have some music", "can i get some music",
              "i need some music", "let's get some music going", "how about some music"]
MUSIC_OFF_V = ["stop the music", "stop playing", "stop playing music", "stop playing the music",
               "pause the music", "pause the song", "pause playback", "turn off the music",
               "switch off the music", "turn the music off", "switch the music off",
               "kill the music", "cut the music", "shut off the music", "shut the music off",
               "end the music", "silence the music", "stop the song", "stop this song",
               "stop the playlist", "pause the playlist", "turn that music off", "shut the music up",
               "stop that music", "pause it", "halt the music", "put the music on pause"]
MUSIC_OFF_N = ["music off", "no more music", "enough music", "stop music", "music stop",
               "pause music", "no music", "music off please", "stop", "pause", "that's enough music"]
MUSIC_OFF_D = ["i don't want music", "i don't want any music", "i'm done with the music",
               "i've had enough music", "i don't want to listen to music anymore",
               "i'd like the music off", "i want the music off", "i want silence no music",
               "i'm tired of this music", "no more songs please"]
LAMP_OBJ = ["the lamp", "the lamp", "the lamp", "lamp", "the desk lamp", "the table lamp",
            "the reading lamp", "the floor lamp", "my lamp", "the little lamp", "the side lamp"]
LAMP_ON_V = ["turn on {O}", "switch on {O}", "put on {O}", "flip on {O}", "turn {O} on",
             "switch {O} on", "put {O} on", "flick on {O}", "flick {O} on", "power on {O}",
             "activate {O}", "light {O}", "get {O} on", "turn {O} back on", "plug in {O}"]
LAMP_OFF_V = ["turn off {O}", "switch off {O}", "shut off {O}", "kill {O}", "power off {O}",
              "turn {O} off", "switch {O} off", "shut {O} off", "flick off {O}", "flick {O} off",
              "deactivate {O}", "put out {O}", "put {O} out", "turn out {O}", "unplug {O}",
              "get {O} off"]
LAMP_ON_N = ["lamp on", "lamp on please", "the lamp on", "desk lamp on", "reading lamp on",
             "table lamp on"]
LAMP_OFF_N = ["lamp off", "lamp off please", "the lamp off", "desk lamp off", "reading lamp off",
              "table lamp off", "no lamp"]
LAMP_ON_D = ["i want the lamp on", "i'd like the lamp on", "i need the lamp on",
             "the lamp should be on", "i need the reading lamp", "can i have the lamp on",
             "can we have the lamp on", "i want to read turn on the lamp"]
LAMP_OFF_D = ["i want the lamp off", "i'd like the lamp off", "i don't need the lamp",
              "i don't need the lamp anymore", "the lamp should be off", "can we have the lamp off",
              "the lamp is too bright", "i'm done reading lamp off"]
BRING_V = ["bring me {O}", "bring {O}", "bring {O} to me", "bring {O} over", "bring {O} here",
           "fetch {O}", "fetch me {O}", "get me {O}", "get {O}", "get {O} for me", "grab me {O}",
           "grab {O}", "hand me {O}", "pass me {O}", "go get {O}", "go and get {O}", "go fetch {O}",
           "go and fetch {O}", "bring over {O}", "give me {O}", "find me {O}", "go grab {O}",
           "bring along {O}", "carry {O} over"]
BRING_D = ["i want {O}", "i need {O}", "i'd like {O}", "can i have {O}", "can i get {O}",
           "could i have {O}", "could i get {O}", "i could use {O}", "may i have {O}",
           "where is {O}", "i'm looking for {O}", "{O} please", "{O} now please"]
BRING_OBJ = {
    "newspaper": ["the newspaper", "the newspaper", "my newspaper", "the paper", "today's paper",
                  "today's newspaper", "the morning paper", "a newspaper", "the daily paper",
                  "the news paper", "the morning newspaper", "the local paper"],
    "juice": ["some juice", "juice", "a juice", "the juice", "a glass of juice", "orange juice",
              "some orange juice", "apple juice", "some apple juice", "a juice box",
              "a cup of juice", "a glass of orange juice", "fruit juice", "my juice"],
    "socks": ["my socks", "my socks", "the socks", "some socks", "a pair of socks", "socks",
              "clean socks", "my warm socks", "some clean socks", "my pair of socks",
              "a fresh pair of socks", "my wool socks"],
    "shoes": ["my shoes", "my shoes", "the shoes", "some shoes", "a pair of shoes", "shoes",
              "my sneakers", "my trainers", "my running shoes", "my boots", "my work shoes",
              "my pair of shoes", "my walking shoes"],
}
BRING_IND = {
    "newspaper": ["i want to read the news", "i'd like to read the paper", "what's in the paper today",
                  "let me see the newspaper", "let me read the paper", "has the paper arrived"],
    "juice": ["i'm thirsty", "i'm really thirsty", "i'd like something to drink",
              "i want something to drink", "get me a drink", "bring me a drink",
              "i need a drink", "pour me some juice", "pour me a glass of juice"],
    "socks": ["my feet are cold bring my socks", "where are my socks", "i need to put my socks on",
              "i can't find my socks"],
    "shoes": ["i need to put my shoes on", "where are my shoes", "i can't find my shoes",
              "i'm going out bring my shoes", "i want to put on my shoes"],
}
LANG_V = ["change the language to {X}", "switch the language to {X}", "set the language to {X}",
          "switch to {X}", "change to {X}", "set it to {X}", "put the language on {X}",
          "make the language {X}", "change language to {X}", "set language to {X}",
          "change the system language to {X}", "switch the system language to {X}",
          "change the settings to {X}", "change your language to {X}", "switch over to {X}",
          "use {X}", "speak {X}", "speak in {X}", "talk in {X}", "talk to me in {X}",
          "speak to me in {X}", "answer in {X}", "reply in {X}", "respond in {X}",
          "switch languages to {X}", "go to {X}", "translate everything into {X}",
          "use {X} from now on", "set {X} as the language", "make it {X}",
          "change the interface to {X}", "set the interface language to {X}"]
LANG_N = ["{X} please", "{X}", "{X} language", "{X} language please", "language {X}",
          "language {X} please", "in {X} please", "{X} mode", "in {X}"]
LANG_D = ["i want {X}", "i'd like {X}", "i speak {X}", "i prefer {X}", "i'd prefer {X}",
          "i want to use {X}", "i'd like to use {X}", "i'd like to switch to {X}",
          "i want the language to be {X}", "can we speak {X}", "can you speak {X}",
          "do you speak {X}", "let's speak {X}", "let's use {X}", "i only understand {X}",
          "i want everything in {X}", "can we switch to {X}", "i'd like it in {X}"]
LANG_NONE_V = ["change the language", "switch the language", "change language", "switch languages",
               "change languages", "set the language", "change the system language",
               "open the language settings", "go to the language settings", "change your language",
               "use a different language", "use another language", "switch to another language",
               "switch to a different language", "pick another language", "select a language",
               "choose a different language", "change the language settings",
               "show me the language options", "reset the language", "adjust the language"]
LANG_NONE_N = ["language", "language settings", "language please", "different language",
               "another language", "language options", "new language", "language change",
               "other languages"]
LANG_NONE_D = ["i want a different language", "i'd like another language",
               "i want to change the language", "i'd like to change the language",
               "i need a different language", "can we change the language",
               "can i change the language", "how do i change the language",
               "i don't understand this language", "i want to switch languages",
               "can we use another language", "this is the wrong language",
               "i'd like to switch languages", "wrong language"]


def _fill(ts, **kw):
    return [t.format(**kw) for t in ts]


def _objs(ts, objs):
    out = []
    for t in ts:
        if "{O}" in t:
            out += [t.replace("{O}", o) for o in objs]
        else:
            out.append(t)
    return out


def cores_for(action, obj, loc):
    """-> dict(kind -> [core]) with kinds V (imperative), N (nominal), D (declarative)."""
    L = LOCS.get(loc)
    if obj == "lights":
        on = action == "activate"
        V = _objs(LIGHT_ON_V if on else LIGHT_OFF_V, LIGHT_OBJ)
        N = LIGHT_ON_N if on else LIGHT_OFF_N
        D = LIGHT_ON_D if on else LIGHT_OFF_D
        if L is None:
            return dict(V=V, N=N, D=D + [d + " in here" for d in D if d.startswith("it")])
        # location: "the kitchen lights", "the lights in the kitchen", fronted "in the kitchen ..."
        out = dict(V=[], N=[], D=[])
        for l in L:
            objs = [f"the {l} lights", f"the {l} light", f"the lights in the {l}",
                    f"the light in the {l}", f"{l} lights", f"the {l} lighting",
                    f"all the lights in the {l}", f"the {l} ceiling light"]
            v = _objs(LIGHT_ON_V if on else LIGHT_OFF_V, objs)
            v += [c + f" in the {l}" for c in _objs(LIGHT_ON_V if on else LIGHT_OFF_V,
                                                       ["the lights", "the light", "the lighting"])]
            if on:
                v += [f"light up the {l}", f"brighten up the {l}", f"light the {l}"]
            else:
                v += [f"darken the {l}", f"make the {l} dark"]
            out["V"] += v
            n = [f"{l} lights {'on' if on else 'off'}", f"{l} light {'on' if on else 'off'}",
                 f"lights {'on' if on else 'off'} in the {l}", f"the {l} lights {'on' if on else 'off'}",
                 f"in the {l} lights {'on' if on else 'off'}", f"{l} {'lights on' if on else 'lights off'} please",
                 f"{l} {'on' if on else 'off'}"]
            if not on:
                n += [f"lights out in the {l}", f"{l} lights out"]
            out["N"] += n
            d = [f"i want the lights {'on' if on else 'off'} in the {l}",
                 f"i'd like the {l} lights {'on' if on else 'off'}",
                 f"i want the {l} lights {'on' if on else 'off'}",
                 f"the {l} lights should be {'on' if on else 'off'}"]
            if on:
                d += [f"it's too dark in the {l}", f"it's dark in the {l}", f"the {l} is too dark",
                      f"i need some light in the {l}", f"i can't see anything in the {l}",
                      f"can we get some light in the {l}", f"give me some light in the {l}"]
            else:
                d += [f"it's too bright in the {l}", f"the {l} is too bright",
                      f"nobody is in the {l}", f"no one's in the {l}",
                      f"i don't need the lights in the {l}", f"i'm leaving the {l}"]
            out["D"] += d
            # fronted location: "in the kitchen, turn on the lights", "kitchen, lights on"
            base = _objs(LIGHT_ON_V if on else LIGHT_OFF_V, ["the lights", "the light"])
            out["D"] += [f"in the {l} {c}" for c in base] + [f"{l} {c}" for c in base[:8]]
        return out
    if obj == "heat":
        up = action == "increase"
        vt = HEAT_UP_V if up else HEAT_DOWN_V
        if L is None:
            return dict(V=_objs(vt, HEAT_OBJ) + (HEAT_UP_NV if up else HEAT_DOWN_NV),
                        N=HEAT_UP_N if up else HEAT_DOWN_N,
                        D=(HEAT_UP_D if up else HEAT_DOWN_D)
                        + [d + " in here" for d in (HEAT_UP_D if up else HEAT_DOWN_D) if d.startswith("it")])
        out = dict(V=[], N=[], D=[])
        for l in L:
            objs = [f"the {l} heat", f"the {l} heating", f"the {l} temperature",
                    f"the heat in the {l}", f"the heating in the {l}", f"the temperature in the {l}",
                    f"the {l} thermostat", f"the {l} radiator", f"the {l} heater"]
            out["V"] += _objs(vt, objs) + [c + f" in the {l}" for c in _objs(vt, HEAT_OBJ[:4])]
            out["V"] += _fill(HEAT_UP_LOCV if up else HEAT_DOWN_LOCV, L=l)
            w = "up" if up else "down"
            out["N"] += [f"{l} heat {w}", f"{l} heating {w}", f"{l} temperature {w}",
                         f"heat {w} in the {l}", f"{'more' if up else 'less'} heat in the {l}",
                         f"{'warmer' if up else 'cooler'} in the {l}", f"{l} {'warmer' if up else 'cooler'}",
                         f"{'more' if up else 'less'} heating in the {l}",
                         f"temperature {w} in the {l}", f"the {l} {'warmer' if up else 'cooler'} please"]
            out["D"] += _fill(HEAT_UP_LOC_D if up else HEAT_DOWN_LOC_D, L=l)
            out["D"] += [f"in the {l} {c}" for c in _objs(vt[:8], HEAT_OBJ[:3])]
            out["D"] += [f"in the {l} {c}" for c in (HEAT_UP_NV if up else HEAT_DOWN_NV)[:3]]
        return out
    if obj == "volume":
        up = action == "increase"
        return dict(V=_objs(VOL_UP_V if up else VOL_DOWN_V, VOL_OBJ), N=VOL_UP_N if up else VOL_DOWN_N,
                    D=VOL_UP_D if up else VOL_DOWN_D)
    if obj == "music":
        on = action == "activate"
        return dict(V=_objs(MUSIC_ON_V if on else MUSIC_OFF_V, MUSIC_OBJ), N=MUSIC_ON_N if on else MUSIC_OFF_N,
                    D=MUSIC_ON_D if on else MUSIC_OFF_D)
    if obj == "lamp":
        on = action == "activate"
        return dict(V=_objs(LAMP_ON_V if on else LAMP_OFF_V, LAMP_OBJ), N=LAMP_ON_N if on else LAMP_OFF_N,
                    D=LAMP_ON_D if on else LAMP_OFF_D)
    if action == "bring":
        objs = BRING_OBJ[obj]
        return dict(V=_objs(BRING_V, objs), N=[], D=_objs(BRING_D, objs) + BRING_IND[obj])
    if action == "change language":
        if obj == "none":
            return dict(V=LANG_NONE_V, N=LANG_NONE_N, D=LANG_NONE_D)
        out = dict(V=[], N=[], D=[])
        for x in LANG_NAMES[obj]:
            out["V"] += _fill(LANG_V, X=x)
            out["N"] += _fill(LANG_N, X=x)
            out["D"] += _fill(LANG_D, X=x)
        return out
    raise ValueError((action, obj, loc))


def _norm(s):
    s = re.sub(r"[^a-z' ]+", " ", s.lower())
    return " ".join(s.split())


def _one(rng, cores):
    kinds = [k for k in ("V", "N", "D") if cores[k]]
    weights = {"V": 0.62, "N": 0.14, "D": 0.24}
    k = rng.choices(kinds, [weights[x] for x in kinds])[0]
    c = rng.choice(cores[k])
    fill = rng.choice(FILLERS) if rng.random() < 0.3 else ""
    suf = rng.choice(SUFFIX) if rng.random() < 0.45 else ""
    if k == "V":
        if c.split(" ", 1)[0] in ("up",):
            frame = rng.choice(["", "please ", "can you "])
            s = frame + c
        elif rng.random() < 0.08 and not c.startswith("go "):
            s = rng.choice(GERUND_FRAMES) + _ing(c)
        else:
            s = (rng.choice(POLITE) if rng.random() < 0.6 else "") + c
        s = fill + s + suf
    elif k == "N":
        s = fill + c + rng.choice(["", "", "", " please", " now", " thanks", " thank you"])
    else:
        s = fill + c + rng.choice(["", "", "", "", " please", " thanks"])
    return _norm(s)


def sample(per_intent=120, seed=0):
    """-> [(label_index, text)]: the 199 phrasings of intents_text plus ``per_intent`` distinct
    grammar sentences per intent (fewer if the intent's grammar is smaller), no sentence under two
    intents."""
    rng = random.Random(seed)
    its = intents_text.intents()
    out, owner = [], {}
    for li, (a, o, l, phr) in enumerate(its):
        for p in phr:
            owner[_norm(p)] = li
            out.append((li, _norm(p)))
    for li, (a, o, l, phr) in enumerate(its):
        cores = cores_for(a, o, l)
        got, tries = 0, 0
        while got < per_intent and tries < per_intent * 50:
            tries += 1
            s = _one(rng, cores)
            if s in owner:
                continue
            owner[s] = li
            out.append((li, s))
            got += 1
    return out


def drop_heldout(pairs):
    """Drop every sentence that equals a held-out new wording or OOV command of
    intents_unseen.py. Returns (kept pairs, number dropped); the colliding sentences are never
    shown (the evaluation wordings stay unread)."""
    import intents_unseen

    held = {_norm(t) for _, _, t in intents_unseen.unseen()}
    held |= {_norm(t) for _, t in intents_unseen.oov()}
    kept = [(li, s) for li, s in pairs if s not in held]
    return kept, len(pairs) - len(kept)


if __name__ == "__main__":
    pairs = sample()
    kept, n = drop_heldout(pairs)
    its = intents_text.intents()
    print(len(pairs), "sentences,", n, "equal to a held-out wording (dropped)")
    cnt = {}
    for li, _ in kept:
        cnt[li] = cnt.get(li, 0) + 1
    for li, (a, o, l, _) in enumerate(its):
        print(intents_text.label(a, o, l), cnt.get(li, 0))
    rng = random.Random(1)
    for li, s in rng.sample(kept, 40):
        print(f"  {intents_text.label(*its[li][:3])}: {s}")
