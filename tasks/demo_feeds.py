"""Demo news: a deterministic world of stories, and the feeds that serve them on 127.0.0.1.

No real article text is available offline, so the demo writes its own: templated but varied
headlines and summaries per topic, each topic with its own people, places and things, so a
text model can learn topics from them. Time is cut into fixed slots of ``SLOT_SECONDS`` on
the Unix clock; every slot holds one story whose content is drawn from a generator seeded by
``(seed, slot)`` alone. The stories of the last ``days`` days up to ``now`` therefore do not
depend on when you ask (a story keeps its id, headline and time), and as the clock moves new
slots fill, so each hourly scrape finds news. About a quarter of the stories are carried by
one or two more outlets, later and under a different headline built from the same facts:
the near-duplicates the morning harvest must collapse.

Contract C3 (fixed): :class:`DemoStory` and :func:`generate_stories`. ``story_id`` names the
underlying story, so several ``DemoStory`` rows share it when several outlets carry it; ``url``
is unique per row (one outlet's article).
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape as xml_escape

SLOT_SECONDS = 240
"""One new story every four minutes: 15 an hour, 360 a day."""
DEFAULT_DAYS = 8
"""Days of history generated (2,880 stories, well over the 2,000 the demo promises)."""
FEED_UPDATE_SECONDS = 1800
"""The demo server publishes new stories in half-hourly batches (like an outlet's feed cache),
so two scrapes a minute apart usually see the same documents and get 304s."""
CARRY_SHARE = 0.27
"""Share of stories carried by more than one outlet."""


@dataclass(frozen=True)
class DemoStory:
    """One outlet's article about one story (contract C3)."""

    story_id: str
    outlet: str
    topic: str
    title: str
    summary: str
    url: str
    published: datetime


@dataclass(frozen=True)
class DemoOutlet:
    """A fictional outlet and how its feed is written (format and quirks the scraper must handle)."""

    slug: str
    name: str
    host: str
    topics: tuple[str, ...]
    """Topics it covers; empty = a general outlet covering all of them."""
    format: str
    """``rss2``, ``atom`` or ``rss1``."""
    entry_categories: bool = True
    """Whether entries carry a category (topical outlets may rely on the feed's default)."""
    dates: bool = True
    """Whether entries carry a date (one outlet omits them: the scraper uses the fetch time)."""
    enclosures: bool = False
    """Whether entries carry an image enclosure."""
    tracking: bool = False
    """Whether links carry utm_* tracking parameters (the scraper drops them)."""
    html_summary: bool = False
    """Whether the summary is HTML (the scraper strips it to text)."""

    @property
    def default_category(self) -> str | None:
        """The category a feed config gives this outlet's entries that carry none."""
        return self.topics[0] if len(self.topics) == 1 else None


@dataclass(frozen=True)
class TopicVocabulary:
    """Words one topic's stories are made of."""

    who: tuple[str, ...]
    where: tuple[str, ...]
    what: tuple[str, ...]
    headlines: tuple[str, ...]
    summaries: tuple[str, ...]


TOPICS: dict[str, TopicVocabulary] = {
    "politics": TopicVocabulary(
        who=(
            "Prime Minister Alva Reyes",
            "the opposition Unity Party",
            "Senator Joan Whitaker",
            "the coalition government",
            "Finance Minister Tomas Berg",
            "the upper house",
            "Governor Lena Okafor",
            "the Green caucus",
            "Speaker Ruth Castellan",
            "the interior ministry",
            "Mayor Idris Fenwick",
            "the electoral commission",
        ),
        where=(
            "the capital",
            "Northbridge",
            "the lower chamber",
            "the eastern provinces",
            "Port Alder",
            "the federal assembly",
            "Westmere",
            "the border districts",
            "Kingsreach",
            "the southern counties",
        ),
        what=(
            "voting reform bill",
            "budget deal",
            "housing package",
            "anti-corruption law",
            "pension overhaul",
            "tax rebate plan",
            "no-confidence motion",
            "redistricting map",
            "campaign finance rules",
            "public sector pay offer",
            "constitutional amendment",
            "snap election timetable",
        ),
        headlines=(
            "{who} pushes {what} through {where} vote",
            "{what} clears key hurdle as {who} wins {n} votes",
            "{who} faces revolt over {what}",
            "Inside the deal: how {who} rescued the {what}",
            "{what} stalls in {where} despite pressure from {who}",
            "Polls show {n}% back {who} on {what}",
            "{who} unveils {what} ahead of session in {where}",
            "Critics round on {who} over {what}",
        ),
        summaries=(
            "{who} said the {what} would be debated in {where} this week, with {n} lawmakers "
            "yet to declare. Party whips expect a close vote and amendments from both sides.",
            "The {what} drew sharp criticism in {where}, where {who} argued it was overdue. "
            "Analysts say {n} seats could decide the outcome of the parliamentary vote.",
            "Negotiators for {who} worked through the night on the {what}. Officials in {where} "
            "said a compromise covering {n} disputed clauses was within reach.",
            "A poll of voters in {where} found {n}% support for the {what} championed by {who}, "
            "but turnout concerns and coalition tensions remain ahead of the election.",
        ),
    ),
    "business": TopicVocabulary(
        who=(
            "Halvorsen Logistics",
            "Brightwater Bank",
            "Corvid Retail Group",
            "Meridian Motors",
            "the central bank",
            "Atlas Freight",
            "Sunmill Foods",
            "Pellham Insurance",
            "Orchard Telecom",
            "Granite Capital",
            "Northwind Airlines",
            "Kestrel Pharmaceuticals",
        ),
        where=(
            "the stock exchange",
            "Europe",
            "Asian markets",
            "the bond market",
            "Wall Street",
            "the eurozone",
            "emerging markets",
            "the retail sector",
            "the City",
            "the Gulf",
        ),
        what=(
            "quarterly earnings",
            "merger talks",
            "interest rate decision",
            "job cuts",
            "share buyback",
            "profit warning",
            "takeover bid",
            "dividend increase",
            "IPO plans",
            "supply chain overhaul",
            "cost-cutting programme",
            "record revenue",
        ),
        headlines=(
            "{who} shares jump {n}% after {what}",
            "{who} announces {what} as demand cools in {where}",
            "Investors weigh {what} at {who}",
            "{what}: {who} beats forecasts by {n} cents",
            "{who} confirms {what}, rattling {where}",
            "Markets in {where} slide as {who} flags {what}",
            "Why {who}'s {what} matters for {where}",
            "{who} chief defends {what} before analysts",
        ),
        summaries=(
            "{who} reported {what} that surprised analysts, sending its shares up {n}% in early "
            "trading on {where}. Executives pointed to lower costs and stronger pricing.",
            "The {what} at {who} comes as investors in {where} reassess growth prospects. The "
            "company said about {n} million in savings would be reinvested in the business.",
            "Traders in {where} reacted cautiously to {what} from {who}, with volumes {n}% above "
            "average. Economists warned of a slower second half for corporate profits.",
            "{who} outlined its {what} in a call with analysts, targeting {n} new contracts in "
            "{where} next year while trimming debt and keeping its outlook unchanged.",
        ),
    ),
    "technology": TopicVocabulary(
        who=(
            "Quillsoft",
            "Nimbus Cloud",
            "Parallax Devices",
            "the open-source Lumen project",
            "Vireo Robotics",
            "Helix Semiconductors",
            "Tessellate AI",
            "Cobalt Networks",
            "Fathom Security",
            "Pixelforge",
            "Arcturus Systems",
            "Kinetic Labs",
        ),
        where=(
            "Silicon Valley",
            "the developer conference",
            "app stores",
            "data centres",
            "the chip market",
            "Berlin",
            "Bangalore",
            "the smartphone market",
            "Seoul",
            "cloud platforms",
        ),
        what=(
            "language model",
            "foldable phone",
            "security patch",
            "chip design",
            "quantum processor",
            "battery breakthrough",
            "privacy update",
            "developer toolkit",
            "satellite internet service",
            "AI assistant",
            "data breach",
            "operating system",
        ),
        headlines=(
            "{who} launches new {what} at {where}",
            "{who} {what} promises {n}x speed-up",
            "Hands-on with the {what} from {who}",
            "{who} scrambles to fix {what} flaw affecting {n} million users",
            "{where} buzzes over {who}'s {what}",
            "{who} open-sources its {what}",
            "Regulators probe {who} over {what}",
            "{who} bets big on {what} for {where}",
        ),
        summaries=(
            "{who} showed its {what} at {where}, claiming it runs {n} times faster than the "
            "previous generation while using less power. Developers get early access next month.",
            "Engineers at {who} said the {what} had been in development for {n} months. Early "
            "testers in {where} praised its speed but raised questions about software support.",
            "A flaw tied to the {what} from {who} may have exposed data of {n} million accounts. "
            "Security researchers in {where} urged users to install updates immediately.",
            "The {what} marks a shift in strategy for {who}, which faces rivals across {where}. "
            "The company expects {n} partners to ship compatible products this year.",
        ),
    ),
    "science": TopicVocabulary(
        who=(
            "astronomers",
            "a team of physicists",
            "marine biologists",
            "the Orion space agency",
            "geneticists",
            "researchers at Halden University",
            "palaeontologists",
            "the Cassiope telescope team",
            "chemists",
            "neuroscientists",
            "volcanologists",
            "archaeologists",
        ),
        where=(
            "the Atacama desert",
            "Antarctica",
            "a deep-sea trench",
            "the far side of the Moon",
            "a Bronze Age site",
            "the particle collider",
            "Mars",
            "the Arctic shelf",
            "a distant galaxy",
            "the rainforest canopy",
        ),
        what=(
            "exoplanet",
            "fossil",
            "gravitational wave signal",
            "gene variant",
            "new species",
            "ancient shipwreck",
            "superconducting material",
            "comet",
            "neural circuit",
            "ice core record",
            "dark matter clue",
            "meteorite",
        ),
        headlines=(
            "{who} discover {what} in {where}",
            "Surprising {what} found by {who} rewrites textbooks",
            "{what} spotted in {where} is {n} million years old",
            "How {who} tracked down a rare {what}",
            "{who} report {what} that defies models",
            "New {what} from {where} puzzles {who}",
            "Study: {what} could explain mystery, say {who}",
            "{who} map {what} in unprecedented detail",
        ),
        summaries=(
            "Writing in a peer-reviewed journal, {who} describe a {what} detected in {where}. "
            "The finding, based on {n} observations, challenges existing theories.",
            "The {what} was identified by {who} after {n} years of fieldwork in {where}. "
            "Independent experts called the evidence compelling but urged replication.",
            "{who} used new instruments to study a {what} in {where}, estimating its age at {n} "
            "million years and opening questions about how it formed.",
            "Data from {where} suggest the {what} behaves unlike anything {who} expected. "
            "A follow-up campaign with {n} instruments is planned for next season.",
        ),
    ),
    "health": TopicVocabulary(
        who=(
            "the health ministry",
            "Dr. Miriam Osei",
            "hospital trusts",
            "the World Health Forum",
            "nurses' unions",
            "a vaccine maker",
            "cardiologists",
            "the food safety agency",
            "paediatricians",
            "public health officials",
            "cancer researchers",
            "GPs",
        ),
        where=(
            "rural clinics",
            "the northern region",
            "care homes",
            "city hospitals",
            "schools",
            "emergency departments",
            "the coastal towns",
            "maternity wards",
            "pharmacies",
            "the capital's hospitals",
        ),
        what=(
            "flu vaccine",
            "waiting lists",
            "measles outbreak",
            "heart drug trial",
            "mental health service",
            "sugar tax",
            "antibiotic resistance",
            "cancer screening",
            "sleep study",
            "air pollution warning",
            "diabetes treatment",
            "hospital staffing",
        ),
        headlines=(
            "{who} warn over {what} in {where}",
            "{what} cuts risk by {n}%, trial finds",
            "{who} expand {what} to {where}",
            "{what}: what patients in {where} need to know",
            "Pressure mounts on {who} as {what} grows",
            "{who} hail {what} results",
            "{n} cases linked to {what} in {where}",
            "New guidance from {who} on {what}",
        ),
        summaries=(
            "{who} said the {what} would reach {where} within weeks, after a trial of {n} "
            "patients showed fewer hospital admissions and few side effects.",
            "Doctors in {where} reported {n} new cases connected to the {what}. {who} urged "
            "people to check symptoms early and keep vaccinations up to date.",
            "A study of the {what} across {where} found a {n}% improvement in outcomes. {who} "
            "cautioned that longer follow-up is needed before changing treatment advice.",
            "Staff in {where} described strain from the {what}, and {who} promised funding for "
            "{n} extra posts to shorten delays for patients.",
        ),
    ),
    "sports": TopicVocabulary(
        who=(
            "Riverside United",
            "the national rugby team",
            "tennis star Mila Novak",
            "the Harbour City Hawks",
            "sprinter Dayo Mensah",
            "Ashford Rovers",
            "the cycling team Velo Nord",
            "golfer Erin Callahan",
            "the women's cricket side",
            "boxer Luis Marquez",
            "the Eastfield Eagles",
            "swimmer Kai Lindqvist",
        ),
        where=(
            "the cup final",
            "the league",
            "the Grand Slam",
            "the world championships",
            "the derby",
            "the Olympic trials",
            "the semi-final",
            "the title race",
            "the season opener",
            "the away leg",
        ),
        what=(
            "comeback win",
            "injury blow",
            "transfer deal",
            "record-breaking run",
            "penalty shootout",
            "coaching change",
            "late equaliser",
            "doping ban",
            "contract extension",
            "stunning upset",
            "hat-trick",
            "new stadium",
        ),
        headlines=(
            "{who} seal {what} in {where}",
            "{what} as {who} stun rivals {n}-1",
            "{who} suffer {what} before {where}",
            "Talking points: {who}'s {what}",
            "{who} confirm {what} worth {n} million",
            "{where}: {who} ride {what} into history",
            "Fans react to {who}'s {what}",
            "{who} eye {where} after {what}",
        ),
        summaries=(
            "{who} produced a {what} in {where}, scoring {n} times in the second half to the "
            "delight of a sell-out crowd. The coach praised the team's resilience.",
            "The {what} leaves {who} facing a difficult run ahead of {where}. Medical staff "
            "said recovery could take {n} weeks, depending on scans.",
            "After the {what}, {who} climb to the top of {where} with {n} points. Rivals "
            "have a game in hand and play again this weekend.",
            "{who} confirmed the {what} on Monday, a move worth about {n} million that "
            "supporters hope will make a difference in {where}.",
        ),
    ),
    "entertainment": TopicVocabulary(
        who=(
            "director Sofia Marchetti",
            "the band Paper Lanterns",
            "actor Jonah Reed",
            "streaming service Flicker",
            "singer Ayla Moon",
            "the Lumiere studio",
            "novelist Peter Haldane",
            "the comedy troupe Loose Ends",
            "pop duo Northern Lights",
            "actress Greta Vance",
            "the Rosewood theatre",
            "rapper K-Tide",
        ),
        where=(
            "the film festival",
            "the box office",
            "the awards season",
            "the charts",
            "the West End",
            "streaming",
            "the summer tour",
            "Broadway",
            "the music awards",
            "cinemas",
        ),
        what=(
            "sequel",
            "world tour",
            "album",
            "award nomination",
            "biopic",
            "reunion concert",
            "series finale",
            "memoir",
            "blockbuster",
            "musical",
            "documentary",
            "casting news",
        ),
        headlines=(
            "{who} announces {what} for {where}",
            "{who}'s {what} tops {where} with {n} million",
            "Review: {who} delivers an assured {what}",
            "{what} from {who} divides critics",
            "{who} teases {what} at {where}",
            "Everything we know about the {what} by {who}",
            "{who} lands {n} nods for {what}",
            "{where} buzz builds around {who}'s {what}",
        ),
        summaries=(
            "{who} confirmed the {what} during an appearance at {where}, promising fans {n} "
            "new songs and scenes. Tickets and release dates follow next month.",
            "The {what} by {who} took {n} million in its first week, a strong start at "
            "{where} that surprised industry watchers.",
            "Critics at {where} were split on the {what} from {who}, praising its ambition "
            "but calling its {n}-minute running time indulgent.",
            "Fans queued for hours as {who} unveiled the {what} at {where}. Organisers said "
            "{n} thousand people attended the launch.",
        ),
    ),
    "world": TopicVocabulary(
        who=(
            "UN envoys",
            "the foreign ministers",
            "aid agencies",
            "the Maravian government",
            "rebel leaders",
            "the regional bloc",
            "President Elias Dorne",
            "peace negotiators",
            "the Kestovan military",
            "border officials",
            "the Red Crescent",
            "diplomats",
        ),
        where=(
            "Maravia",
            "the Kestovan border",
            "the Sahel",
            "the Baltic",
            "the island republic",
            "the disputed valley",
            "the refugee camps",
            "the highlands",
            "the delta region",
            "the strait",
        ),
        what=(
            "ceasefire",
            "peace talks",
            "humanitarian corridor",
            "sanctions",
            "prisoner swap",
            "election dispute",
            "trade embargo",
            "earthquake relief",
            "border clashes",
            "naval standoff",
            "summit",
            "evacuation",
        ),
        headlines=(
            "{who} agree {what} in {where}",
            "{what} holds in {where} as {who} meet",
            "{who} warn {what} could collapse",
            "{n} dead as {what} falters in {where}",
            "Explainer: the {what} in {where}",
            "{who} call for {what} after {n} days of fighting",
            "{what} brings hope to {where}, say {who}",
            "{who} reject terms of {what}",
        ),
        summaries=(
            "{who} announced a {what} covering {where} after talks lasting {n} hours. "
            "Observers said the agreement remains fragile and monitoring will be key.",
            "The {what} in {where} faces its first test as {who} report {n} violations. "
            "Civilians continue to flee toward neighbouring regions.",
            "{who} said the {what} would let aid reach {n} thousand people in {where}, "
            "though convoys still need security guarantees from both sides.",
            "Talks on the {what} resumed with {who} in attendance. Diplomats said {n} "
            "issues remain, including the future status of {where}.",
        ),
    ),
    "climate": TopicVocabulary(
        who=(
            "climate scientists",
            "the energy regulator",
            "campaigners",
            "the weather service",
            "wind farm developers",
            "the environment agency",
            "coastal councils",
            "solar installers",
            "glaciologists",
            "farmers' groups",
            "the grid operator",
            "the climate minister",
        ),
        where=(
            "the river basin",
            "the North Sea",
            "the Alps",
            "coastal cities",
            "the grasslands",
            "the tropics",
            "the Arctic",
            "the floodplain",
            "the southern coast",
            "the desert",
        ),
        what=(
            "heatwave",
            "emissions target",
            "offshore wind farm",
            "flood defences",
            "carbon tax",
            "drought",
            "glacier retreat",
            "heat pump grants",
            "wildfire season",
            "coal plant closure",
            "record temperatures",
            "sea level rise",
        ),
        headlines=(
            "{what} hits {where}, {who} warn",
            "{who} approve {what} for {where}",
            "{what}: {n}% jump alarms {who}",
            "{who} say {what} threatens {where}",
            "Can {where} cope with {what}?",
            "{who} unveil plan to tackle {what}",
            "{n} GW boost as {what} comes online",
            "{who} urge action after {what}",
        ),
        summaries=(
            "{who} said the {what} affecting {where} was made more likely by warming, with "
            "temperatures {n} degrees above the seasonal average.",
            "Construction of the {what} in {where} will start next year after {who} gave the "
            "go-ahead. It is expected to power {n} thousand homes.",
            "Residents in {where} are preparing for the {what}. {who} estimate {n} thousand "
            "properties are at risk without new investment.",
            "A report by {who} found the {what} accelerating across {where}, with losses of "
            "{n}% over the decade and knock-on effects for water supplies.",
        ),
    ),
    "travel": TopicVocabulary(
        who=(
            "budget airline SkyHop",
            "rail operators",
            "the tourism board",
            "cruise lines",
            "hotel chains",
            "airport bosses",
            "travel agents",
            "the national parks service",
            "ferry companies",
            "backpackers",
            "the aviation authority",
            "hostel owners",
        ),
        where=(
            "the Lakes",
            "the Amalfi coast",
            "Lisbon",
            "Kyoto",
            "the fjords",
            "Patagonia",
            "the Greek islands",
            "Marrakesh",
            "the Rockies",
            "Bali",
        ),
        what=(
            "summer timetable",
            "visa rules",
            "night train",
            "overtourism limits",
            "fare increase",
            "new route",
            "passport delays",
            "hiking trail",
            "strike",
            "boutique hotel",
            "tourist tax",
            "rail pass",
        ),
        headlines=(
            "{who} launch {what} to {where}",
            "{where} brings in {what} as visitors top {n} million",
            "{what} chaos: {who} apologise",
            "The best of {where}: a {what} guide",
            "{who} cut prices on {what} by {n}%",
            "{what} returns to {where} after {n} years",
            "{who} warn of {what} this weekend",
            "Why {where} is betting on a {what}",
        ),
        summaries=(
            "{who} will run the {what} to {where} from spring, with {n} departures a week and "
            "fares starting lower than last season.",
            "Officials in {where} introduced a {what} after {n} million visitors last year "
            "strained roads, water and housing. {who} fear bookings may fall.",
            "Travellers faced delays as the {what} hit {where}. {who} said {n} services were "
            "cancelled and advised passengers to check before setting off.",
            "Our guide to {where} covers the {what}, where to stay and what to eat, with tips "
            "from {who} on avoiding the crowds in peak weeks.",
        ),
    ),
    "food": TopicVocabulary(
        who=(
            "chef Marco Bellini",
            "the bakery chain Crumb",
            "food critics",
            "organic farmers",
            "the restaurant guide",
            "home cooks",
            "coffee roasters",
            "winemakers",
            "the street food collective",
            "nutritionists",
            "cheesemakers",
            "brewers",
        ),
        where=(
            "the old town",
            "the harvest festival",
            "Michelin circles",
            "farmers' markets",
            "the wine region",
            "the night market",
            "the high street",
            "the coast",
            "the cookery school",
            "the food hall",
        ),
        what=(
            "tasting menu",
            "sourdough recipe",
            "vintage",
            "vegan menu",
            "pop-up restaurant",
            "olive harvest",
            "cookbook",
            "coffee blend",
            "seafood ban",
            "food price rise",
            "street food award",
            "craft beer",
        ),
        headlines=(
            "{who} open {what} in {where}",
            "{what} wins praise from {who}",
            "Recipe of the week: {who}'s {what}",
            "{where} celebrates {what} with {n} stalls",
            "{who} rate the {what} {n} out of 10",
            "The {what} everyone in {where} is talking about",
            "{what} hit as {who} face rising costs",
            "{who} share secrets of the perfect {what}",
        ),
        summaries=(
            "{who} unveiled the {what} at {where}, with {n} dishes built around seasonal "
            "produce. Reservations sold out within hours.",
            "The {what} from {who} has become a favourite in {where}. We tried it and explain "
            "why it takes {n} hours and is worth every minute.",
            "Rising costs are squeezing {who}: the {what} now costs {n}% more to make, and "
            "several venues in {where} have raised prices or cut opening hours.",
            "At {where}, {who} showed off the {what} to {n} thousand visitors, and judges "
            "handed out prizes for flavour and sustainability.",
        ),
    ),
    "education": TopicVocabulary(
        who=(
            "the education secretary",
            "teachers' unions",
            "university leaders",
            "exam boards",
            "parents' groups",
            "the schools inspectorate",
            "students",
            "headteachers",
            "the skills council",
            "researchers at Kingsreach College",
            "nursery providers",
            "the student loans company",
        ),
        where=(
            "state schools",
            "universities",
            "primary schools",
            "the north",
            "sixth forms",
            "rural schools",
            "the capital",
            "colleges",
            "academies",
            "nurseries",
        ),
        what=(
            "exam results",
            "tuition fees",
            "teacher strike",
            "school meals scheme",
            "reading programme",
            "curriculum review",
            "apprenticeships",
            "class sizes",
            "phone ban",
            "maths tutoring",
            "funding formula",
            "admissions rules",
        ),
        headlines=(
            "{who} back {what} for {where}",
            "{what}: {n}% of pupils affected in {where}",
            "{who} clash over {what}",
            "{what} to be overhauled, {who} confirm",
            "What the {what} means for {where}",
            "{who} warn {what} is failing {where}",
            "{n} schools sign up to {what}",
            "{who} welcome {what} after long campaign",
        ),
        summaries=(
            "{who} said the {what} would roll out across {where} from September, reaching "
            "{n} thousand pupils in its first year.",
            "The {what} has split opinion in {where}: {who} argue it raises standards, while "
            "critics warn of pressure on staff. About {n}% of schools are affected.",
            "New figures show the {what} in {where} changed by {n}% this year. {who} called "
            "for more funding and a clearer plan from ministers.",
            "{who} met ministers over the {what}, presenting a survey of {n} teachers in "
            "{where} who said workloads had risen sharply.",
        ),
    ),
}

_TOPIC_NAMES = tuple(TOPICS)

OUTLETS: tuple[DemoOutlet, ...] = (
    DemoOutlet("harbor-gazette", "The Harbor Gazette", "harborgazette.example", (), "rss2"),
    DemoOutlet("daily-meridian", "Daily Meridian", "dailymeridian.example", (), "atom", tracking=True),
    DemoOutlet("northern-ledger", "Northern Ledger", "northernledger.example", (), "rss2", enclosures=True),
    DemoOutlet("the-courier", "The Courier", "thecourier.example", (), "rss1"),
    DemoOutlet("morning-wire", "Morning Wire", "morningwire.example", (), "rss2", dates=False),
    DemoOutlet("globe-and-anchor", "Globe & Anchor", "globeandanchor.example", (), "atom", html_summary=True),
    DemoOutlet("capitol-brief", "Capitol Brief", "capitolbrief.example", ("politics",), "rss2", False),
    DemoOutlet("ballot-box", "Ballot Box Weekly", "ballotbox.example", ("politics", "world"), "atom"),
    DemoOutlet(
        "market-street", "Market Street Journal", "marketstreet.example", ("business",), "rss2", tracking=True
    ),
    DemoOutlet("ledger-lines", "Ledger Lines", "ledgerlines.example", ("business", "technology"), "rss1"),
    DemoOutlet("circuit-board", "Circuit Board", "circuitboard.example", ("technology",), "atom", False),
    DemoOutlet(
        "byte-daily", "Byte Daily", "bytedaily.example", ("technology", "science"), "rss2", enclosures=True
    ),
    DemoOutlet("lab-notes", "Lab Notes", "labnotes.example", ("science",), "rss1", False),
    DemoOutlet("pulse-health", "Pulse Health", "pulsehealth.example", ("health",), "rss2", html_summary=True),
    DemoOutlet("wellbeing-today", "Wellbeing Today", "wellbeingtoday.example", ("health", "food"), "atom"),
    DemoOutlet("full-time", "Full Time", "fulltime.example", ("sports",), "rss2", False, enclosures=True),
    DemoOutlet("the-touchline", "The Touchline", "touchline.example", ("sports",), "atom", tracking=True),
    DemoOutlet("marquee", "Marquee", "marquee.example", ("entertainment",), "rss2"),
    DemoOutlet("encore", "Encore Magazine", "encore.example", ("entertainment", "food"), "rss1"),
    DemoOutlet("world-desk", "World Desk", "worlddesk.example", ("world",), "atom", False),
    DemoOutlet(
        "green-dispatch", "Green Dispatch", "greendispatch.example", ("climate",), "rss2", html_summary=True
    ),
    DemoOutlet("weather-front", "Weather Front", "weatherfront.example", ("climate", "travel"), "atom"),
    DemoOutlet(
        "wanderlust", "Wanderlust Post", "wanderlust.example", ("travel",), "rss2", False, enclosures=True
    ),
    DemoOutlet("the-larder", "The Larder", "thelarder.example", ("food",), "rss1", False),
    DemoOutlet("campus-times", "Campus Times", "campustimes.example", ("education",), "rss2", False),
    DemoOutlet("class-notes", "Class Notes", "classnotes.example", ("education", "science"), "atom"),
)

_OUTLETS_BY_TOPIC: dict[str, tuple[DemoOutlet, ...]] = {
    topic: tuple(o for o in OUTLETS if not o.topics or topic in o.topics) for topic in _TOPIC_NAMES
}
# Topical outlets write most of their topic; general ones pick up the rest.
_PRIMARY_WEIGHT = {True: 3.0, False: 1.0}


def _slug(text: str, limit: int = 60) -> str:
    out = "".join(ch.lower() if ch.isalnum() else "-" for ch in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")[:limit].rstrip("-")


_SENTENCE_START = re.compile(r"([.:?!] )([a-z])")


def _fill(template: str, facts: dict[str, str]) -> str:
    text = template.format(**facts)
    text = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)
    return text[0].upper() + text[1:]


def _slot_stories(seed: int, slot: int) -> list[DemoStory]:
    """The story of one time slot, as written by each outlet that carries it."""
    rng = random.Random(f"recflow-demo:{seed}:{slot}")
    topic = rng.choice(_TOPIC_NAMES)
    vocab = TOPICS[topic]
    facts = {
        "who": rng.choice(vocab.who),
        "where": rng.choice(vocab.where),
        "what": rng.choice(vocab.what),
        "n": str(rng.randint(2, 98)),
    }
    story_id = hashlib.sha1(f"{seed}:{slot}".encode()).hexdigest()[:16]
    candidates = _OUTLETS_BY_TOPIC[topic]
    weights = [_PRIMARY_WEIGHT[bool(o.topics)] for o in candidates]
    primary = rng.choices(candidates, weights=weights, k=1)[0]
    carriers = [primary]
    if rng.random() < CARRY_SHARE:
        others = [o for o in candidates if o is not primary]
        carriers += rng.sample(others, k=min(len(others), rng.choice((1, 1, 2))))
    headline_order = rng.sample(range(len(vocab.headlines)), k=len(carriers))
    summary_order = rng.sample(range(len(vocab.summaries)), k=len(carriers))
    published = datetime.fromtimestamp(slot * SLOT_SECONDS + rng.randrange(SLOT_SECONDS), tz=UTC)
    stories = []
    for i, outlet in enumerate(carriers):
        title = _fill(vocab.headlines[headline_order[i]], facts)
        summary = _fill(vocab.summaries[summary_order[i]], facts)
        when = published + timedelta(minutes=rng.randint(12, 240)) if i else published
        url = f"https://{outlet.host}/{when:%Y/%m/%d}/{_slug(title)}-{story_id[:8]}"
        stories.append(DemoStory(story_id, outlet.name, topic, title, summary, url, when))
    return stories


def generate_stories(
    seed: int = 7, now: datetime | None = None, *, days: int = DEFAULT_DAYS
) -> list[DemoStory]:
    """All outlets' articles published in the ``days`` days up to ``now`` (default: the clock).

    Deterministic for ``(seed, now)``; an article's content depends only on ``seed`` and its
    time slot, so moving ``now`` forward only adds articles (and drops those older than
    ``days``). Sorted by publication time, oldest first.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    end = now.timestamp()
    start = end - days * 86_400
    first_slot = int(start // SLOT_SECONDS) + 1
    last_slot = int(end // SLOT_SECONDS)
    stories = [
        story
        for slot in range(first_slot, last_slot + 1)
        for story in _slot_stories(seed, slot)
        if story.published.timestamp() <= end
    ]
    stories.sort(key=lambda s: (s.published, s.url))
    return stories


def outlet_by_name(name: str) -> DemoOutlet:
    """The outlet called ``name`` (as in ``DemoStory.outlet``)."""
    for outlet in OUTLETS:
        if outlet.name == name:
            return outlet
    raise KeyError(f"no demo outlet named {name!r}; known: {[o.name for o in OUTLETS]}")


# --- the feeds: one per outlet, rendered as RSS 2.0, Atom 1.0 or RSS 1.0 ----------------------

FEED_FORMATS = ("rss2", "atom", "rss1")
_CONTENT_TYPES = {
    "rss2": "application/rss+xml; charset=utf-8",
    "atom": "application/atom+xml; charset=utf-8",
    "rss1": "application/rdf+xml; charset=utf-8",
}


def demo_feed_configs(host: str = "127.0.0.1", port: int = 8765) -> list[dict[str, str | None]]:
    """The feed list of the embedded default config: url, name and default category per outlet."""
    return [
        {"url": f"http://{host}:{port}/feeds/{o.slug}.xml", "name": o.name, "category": o.default_category}
        for o in OUTLETS
    ]


def _x(text: str) -> str:
    return xml_escape(text, {'"': "&quot;"})


def _rfc822(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC), usegmt=True)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry_link(outlet: DemoOutlet, story: DemoStory) -> str:
    if outlet.tracking:
        return f"{story.url}?utm_source=rss&utm_medium=feed&utm_campaign={outlet.slug}"
    return story.url


def _entry_summary(outlet: DemoOutlet, story: DemoStory) -> str:
    if outlet.html_summary:
        return f'<p><strong>{story.title}.</strong> {story.summary} <a href="{story.url}">Read more</a></p>'
    return story.summary


def render_feed(outlet: DemoOutlet, stories: list[DemoStory], base_url: str, built: datetime) -> bytes:
    """One outlet's feed document, newest entries first, in the outlet's format and quirks."""
    stories = sorted(stories, key=lambda s: (s.published, s.url), reverse=True)
    self_url = f"{base_url}/feeds/{outlet.slug}.xml"
    home = f"https://{outlet.host}/"
    parts: list[str] = ['<?xml version="1.0" encoding="utf-8"?>\n']
    if outlet.format == "rss2":
        parts.append(
            '<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"><channel>'
            f"<title>{_x(outlet.name)}</title><link>{home}</link>"
            f"<description>{_x(outlet.name)}: latest news</description><language>en</language>"
            f'<atom:link href="{_x(self_url)}" rel="self" type="application/rss+xml"/>'
            f"<lastBuildDate>{_rfc822(built)}</lastBuildDate>\n"
        )
        for s in stories:
            parts.append(
                f"<item><title>{_x(s.title)}</title><link>{_x(_entry_link(outlet, s))}</link>"
                f'<guid isPermaLink="false">{s.story_id}-{outlet.slug}</guid>'
                f"<description>{_x(_entry_summary(outlet, s))}</description>"
            )
            if outlet.entry_categories:
                parts.append(f"<category>{_x(s.topic)}</category>")
            if outlet.dates:
                parts.append(f"<pubDate>{_rfc822(s.published)}</pubDate>")
            if outlet.enclosures:
                parts.append(
                    f'<enclosure url="https://{outlet.host}/img/{s.story_id}.jpg" '
                    'length="48213" type="image/jpeg"/>'
                )
            parts.append("</item>\n")
        parts.append("</channel></rss>\n")
    elif outlet.format == "atom":
        parts.append(
            '<feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>{_x(outlet.name)}</title><id>{home}</id>"
            f'<link href="{home}"/><link rel="self" href="{_x(self_url)}"/>'
            f"<updated>{_iso(built)}</updated><author><name>{_x(outlet.name)}</name></author>\n"
        )
        for s in stories:
            kind = "html" if outlet.html_summary else "text"
            parts.append(
                f"<entry><title>{_x(s.title)}</title>"
                f'<link rel="alternate" href="{_x(_entry_link(outlet, s))}"/>'
                f"<id>urn:recflow-demo:{s.story_id}:{outlet.slug}</id>"
                f'<summary type="{kind}">{_x(_entry_summary(outlet, s))}</summary>'
            )
            if outlet.entry_categories:
                parts.append(f'<category term="{_x(s.topic)}"/>')
            if outlet.dates:
                parts.append(
                    f"<updated>{_iso(s.published)}</updated><published>{_iso(s.published)}</published>"
                )
            if outlet.enclosures:
                parts.append(
                    f'<link rel="enclosure" type="image/jpeg" length="48213" '
                    f'href="https://{outlet.host}/img/{s.story_id}.jpg"/>'
                )
            parts.append("</entry>\n")
        parts.append("</feed>\n")
    elif outlet.format == "rss1":
        parts.append(
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            'xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f'<channel rdf:about="{_x(self_url)}"><title>{_x(outlet.name)}</title><link>{home}</link>'
            f"<description>{_x(outlet.name)}</description><items><rdf:Seq>"
        )
        parts += [f'<rdf:li rdf:resource="{_x(_entry_link(outlet, s))}"/>' for s in stories]
        parts.append("</rdf:Seq></items></channel>\n")
        for s in stories:
            link = _x(_entry_link(outlet, s))
            parts.append(
                f'<item rdf:about="{link}"><title>{_x(s.title)}</title><link>{link}</link>'
                f"<description>{_x(_entry_summary(outlet, s))}</description>"
            )
            if outlet.entry_categories:
                parts.append(f"<dc:subject>{_x(s.topic)}</dc:subject>")
            if outlet.dates:
                parts.append(f"<dc:date>{_iso(s.published)}</dc:date>")
            parts.append("</item>\n")
        parts.append("</rdf:RDF>\n")
    else:
        raise ValueError(
            f"outlet {outlet.slug}: unknown feed format {outlet.format!r}; expected {FEED_FORMATS}"
        )
    return "".join(parts).encode("utf-8")


def bench_feed(index: int, entries: int, seed: int = 7) -> bytes:
    """Benchmark feed ``index``: ``entries`` distinct stories (RSS 2.0), none shared with other
    bench feeds, so a benchmark scrape writes every entry it parses."""
    outlet = DemoOutlet(f"bench-{index}", f"Bench Feed {index}", f"bench{index}.example", (), "rss2")
    base_slot = 1_700_000_000 // SLOT_SECONDS
    stories = []
    for j in range(entries):
        first = _slot_stories(seed + 1000, base_slot - index * entries - j)[0]
        url = f"https://{outlet.host}/{first.published:%Y/%m/%d}/{_slug(first.title)}-{first.story_id[:8]}"
        stories.append(
            DemoStory(
                first.story_id, outlet.name, first.topic, first.title, first.summary, url, first.published
            )
        )
    return render_feed(
        outlet, stories, "http://bench.invalid", datetime.fromtimestamp(base_slot * SLOT_SECONDS, UTC)
    )


# --- broken feeds: every way a feed can go wrong, for tests and the robustness demo ----------

_BROKEN_RSS_ITEM = "<item><title>{title}</title><link>https://broken.example/{case}/{n}</link><description>{text}</description></item>"
BROKEN_FEEDS: dict[str, str] = {
    "malformed.xml": "XML cut off mid-element (the parser's salvage mode may recover entries)",
    "latin1-declared-utf8.xml": "bytes in ISO-8859-1 while the declaration says UTF-8",
    "no-encoding.xml": "windows-1252 bytes, no XML declaration, no charset",
    "html": "an HTML page served where a feed was expected",
    "bomb.xml": "an entity-expansion ('billion laughs') bomb",
    "endless.xml": "a response that never ends",
    "huge.xml": "a response far larger than the size cap",
    "empty.xml": "200 with an empty body",
    "404": "not found",
    "500": "a server error on every attempt",
    "flaky.xml": "503 on the first attempt, a good feed on the retry",
    "slow.xml": "answers after the read timeout",
    "redirect-loop": "redirects to a page that redirects back",
    "redirect-ftp": "redirects to an ftp:// address",
}


def _broken_rss(
    case: str, items: list[tuple[str, str]], *, declaration: str = '<?xml version="1.0" encoding="utf-8"?>'
) -> str:
    body = "".join(_BROKEN_RSS_ITEM.format(title=t, n=i, text=d, case=case) for i, (t, d) in enumerate(items))
    return f'{declaration}<rss version="2.0"><channel><title>Broken</title><link>https://broken.example/</link>{body}</channel></rss>'


_BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">\n'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(9))
    + ']>\n<rss version="2.0"><channel><title>Bomb</title><item><title>&j;</title>'
    "<link>https://broken.example/bomb</link></item></channel></rss>"
)


# --- the server ------------------------------------------------------------------------------


@dataclass
class ServedDocument:
    """A fixed document a test registers on the server (with ETag/Last-Modified like the rest)."""

    body: bytes
    content_type: str = "application/rss+xml; charset=utf-8"
    status: int = 200
    last_modified: datetime | None = None


@dataclass
class RequestStats:
    """What the server saw: requests, conditional requests, 304s, per path."""

    requests: int = 0
    conditional: int = 0
    not_modified: int = 0
    by_path: dict[str, int] = field(default_factory=dict)


class DemoFeedServer:
    """The demo outlets' feeds (plus broken and benchmark feeds) over HTTP on 127.0.0.1.

    Routes: ``/feeds/<outlet>.xml`` (the demo outlets, stories up to the clock),
    ``/bench/<i>.xml?entries=N`` (distinct benchmark stories), ``/broken/<case>`` (see
    :data:`BROKEN_FEEDS`), ``/`` (an index) and any path registered with :meth:`add_document`.
    Every 200 carries ``ETag`` and ``Last-Modified`` and conditional requests get 304.
    ``clock`` lets tests move time; the documents change every ``FEED_UPDATE_SECONDS``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        seed: int = 7,
        clock: Callable[[], datetime] | None = None,
        days: int = DEFAULT_DAYS,
        slow_seconds: float = 30.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.seed = seed
        self.clock = clock or (lambda: datetime.now(UTC))
        self.days = days
        self.slow_seconds = slow_seconds
        self.documents: dict[str, ServedDocument] = {}
        self.stats = RequestStats()
        self._lock = threading.Lock()
        self._stories: tuple[int, dict[str, list[DemoStory]]] | None = None
        self._flaky_seen: set[str] = set()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> DemoFeedServer:
        server = self

        class Handler(_DemoHandler):
            demo = server

        self._httpd = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="demo-feeds", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def serve_forever(self) -> None:
        """Block until interrupted (``recflow demo-feeds``)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self) -> DemoFeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            return self.requested_port
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def feed_configs(self) -> list[dict[str, str | None]]:
        """The feed list for this server's address (what the default config holds for 8765)."""
        return demo_feed_configs(self.host, self.port)

    def add_document(self, path: str, document: ServedDocument) -> str:
        """Serve ``document`` at ``path``; returns its URL."""
        self.documents[path] = document
        return self.base_url + path

    # content
    def _stories_by_outlet(self) -> tuple[datetime, dict[str, list[DemoStory]]]:
        now = self.clock().astimezone(UTC)
        slot = int(now.timestamp() // FEED_UPDATE_SECONDS)
        with self._lock:
            if self._stories is None or self._stories[0] != slot:
                cut = datetime.fromtimestamp(slot * FEED_UPDATE_SECONDS, UTC)
                grouped: dict[str, list[DemoStory]] = {o.name: [] for o in OUTLETS}
                for story in generate_stories(self.seed, cut, days=self.days):
                    grouped[story.outlet].append(story)
                self._stories = (slot, grouped)
            return datetime.fromtimestamp(slot * FEED_UPDATE_SECONDS, UTC), self._stories[1]

    def outlet_document(self, slug: str) -> ServedDocument | None:
        outlet = next((o for o in OUTLETS if o.slug == slug), None)
        if outlet is None:
            return None
        built, grouped = self._stories_by_outlet()
        stories = grouped[outlet.name]
        newest = max((s.published for s in stories), default=built)
        body = render_feed(outlet, stories, self.base_url, newest)
        return ServedDocument(body, _CONTENT_TYPES[outlet.format], last_modified=newest)


class _DemoHandler(BaseHTTPRequestHandler):
    demo: DemoFeedServer
    protocol_version = "HTTP/1.1"
    server_version = "recflow-demo-feeds/1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the scraper logs what matters."""

    def do_GET(self) -> None:
        parsed = urlsplit(self.path)
        path = parsed.path
        demo = self.demo
        with demo._lock:
            demo.stats.requests += 1
            demo.stats.by_path[path] = demo.stats.by_path.get(path, 0) + 1
            if self.headers.get("If-None-Match") or self.headers.get("If-Modified-Since"):
                demo.stats.conditional += 1
        try:
            if path.startswith("/broken/"):
                self._broken(path.removeprefix("/broken/"))
                return
            document = demo.documents.get(path)
            if document is None and path.startswith("/feeds/") and path.endswith(".xml"):
                document = demo.outlet_document(path.removeprefix("/feeds/").removesuffix(".xml"))
            if document is None and path.startswith("/bench/") and path.endswith(".xml"):
                entries = int(dict(parse_qsl(parsed.query)).get("entries", "50"))
                index = int(path.removeprefix("/bench/").removesuffix(".xml"))
                document = ServedDocument(bench_feed(index, entries, demo.seed))
            if document is None and path == "/":
                links = "".join(
                    f'<li><a href="{f["url"]}">{_x(str(f["name"]))}</a></li>' for f in demo.feed_configs()
                )
                document = ServedDocument(
                    f"<html><body><h1>recflow demo feeds</h1><ul>{links}</ul></body></html>".encode(),
                    "text/html; charset=utf-8",
                )
            if document is None:
                self._send(404, b"not found", "text/plain")
                return
            self._send_document(document)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_document(self, document: ServedDocument) -> None:
        etag = '"' + hashlib.sha1(document.body).hexdigest()[:20] + '"'
        headers = {"ETag": etag}
        modified = document.last_modified
        if modified is not None:
            headers["Last-Modified"] = _rfc822(modified)
        if document.status == 200 and self._not_modified(etag, modified):
            with self.demo._lock:
                self.demo.stats.not_modified += 1
            self.send_response(304)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            return
        self._send(document.status, document.body, document.content_type, headers)

    def _not_modified(self, etag: str, modified: datetime | None) -> bool:
        match = self.headers.get("If-None-Match")
        if match is not None:
            return etag in [m.strip() for m in match.split(",")] or match.strip() == "*"
        since = self.headers.get("If-Modified-Since")
        if since and modified is not None:
            try:
                return modified.replace(microsecond=0) <= parsedate_to_datetime(since)
            except (TypeError, ValueError):
                return False
        return False

    def _broken(self, case: str) -> None:
        demo = self.demo
        latin = [
            ("Café crème prices soar in Zürich", "Baristas in Zürich say the café crème now costs more.")
        ]
        if case == "malformed.xml":
            text = _broken_rss(case, [("A story before the break", "Fine so far."), ("Second", "Also fine")])
            self._send_document(ServedDocument(text[: len(text) - 40].encode()))
        elif case == "latin1-declared-utf8.xml":
            self._send_document(
                ServedDocument(_broken_rss(case, latin).encode("latin-1"), "application/rss+xml")
            )
        elif case == "no-encoding.xml":
            body = _broken_rss(
                case, [("Naïve résumé tips – 2026", "Smart “quotes” and a dash—here.")], declaration=""
            )
            self._send_document(ServedDocument(body.encode("cp1252"), "text/xml"))
        elif case == "html":
            page = "<!DOCTYPE html><html><head><title>Welcome</title></head><body><p>Hi!</p></body></html>"
            self._send_document(ServedDocument(page.encode(), "text/html; charset=utf-8"))
        elif case == "bomb.xml":
            self._send_document(ServedDocument(_BOMB.encode(), "application/rss+xml"))
        elif case == "endless.xml":
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b'<?xml version="1.0"?><rss version="2.0"><channel><title>Endless</title>')
            chunk = (_BROKEN_RSS_ITEM.format(title="Again", n=0, text="x" * 400, case=case) * 20).encode()
            while not demo._stop.is_set():
                self.wfile.write(chunk)
            self.close_connection = True
        elif case == "huge.xml":
            filler = _BROKEN_RSS_ITEM.format(title="Filler", n=1, text="y" * 1000, case=case)
            body = _broken_rss(case, []).replace("</channel>", filler * 8000 + "</channel>")
            self._send_document(ServedDocument(body.encode()))
        elif case == "empty.xml":
            self._send_document(ServedDocument(b""))
        elif case == "404":
            self._send(404, b"no such feed", "text/plain")
        elif case == "500":
            self._send(500, b"internal error", "text/plain")
        elif case == "flaky.xml":
            key = self.headers.get("User-Agent", "") + self.path
            with demo._lock:
                first = key not in demo._flaky_seen
                demo._flaky_seen.add(key)
            if first:
                self._send(503, b"try again", "text/plain", {"Retry-After": "0"})
            else:
                self._send_document(
                    ServedDocument(
                        _broken_rss(case, [("Flaky feed recovered", "Second try worked.")]).encode()
                    )
                )
        elif case == "slow.xml":
            demo._stop.wait(demo.slow_seconds)
            self._send_document(ServedDocument(_broken_rss(case, [("Too late", "Nobody waited.")]).encode()))
        elif case == "redirect-loop":
            self._send(302, b"", "text/plain", {"Location": "/broken/redirect-loop-b"})
        elif case == "redirect-loop-b":
            self._send(302, b"", "text/plain", {"Location": "/broken/redirect-loop"})
        elif case == "redirect-ftp":
            self._send(301, b"", "text/plain", {"Location": "ftp://127.0.0.1/feed.xml"})
        else:
            self._send(404, b"unknown broken case", "text/plain")


def broken_feed_configs(base_url: str) -> list[dict[str, str | None]]:
    """Feed config entries for every broken case (for tests and the robustness demo)."""
    return [
        {"url": f"{base_url}/broken/{case}", "name": f"broken: {case}", "category": None}
        for case in BROKEN_FEEDS
    ]


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
