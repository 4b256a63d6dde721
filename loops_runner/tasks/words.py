"""The vocabulary every built-in task and the tokenizer corpus draw from."""

from __future__ import annotations

from functools import cache

WORDS: tuple[str, ...] = tuple(
    """
    apple river stone cloud green window garden paper silver orange planet music
    little yellow bright winter summer forest ocean mountain valley castle dragon
    pencil rabbit turtle candle mirror basket butter ginger lemon pepper tomato
    rocket engine signal bridge market harbor island desert meadow thunder shadow
    silent gentle simple quiet rapid golden purple violet crimson marble copper
    kitten puppy falcon salmon badger otter beaver spider monkey parrot zebra tiger
    lion horse camel goat sheep cow duck goose eagle owl fox wolf bear deer mouse
    table chair lamp door floor wall roof glass plate spoon knife fork bowl cup
    book letter story poem song dance game puzzle riddle answer question number
    happy sad calm brave clever kind proud shy tired eager curious careful honest
    red blue black white brown pink gray gold
    run walk jump swim read write sing draw cook bake build paint climb sleep dream
    think learn teach speak listen watch carry throw catch open close start finish
    north south east west morning evening night noon today tomorrow yesterday
    water fire earth wind light sound color shape circle square triangle line point
    city village road street house school office station train plane ship car bike
    coffee tea bread cheese rice soup salad honey sugar salt milk juice cake cookie
    blanket journey lantern kitchen chicken dolphin penguin diamond picture compass
    captain teacher blossom rainbow balloon pancake popcorn library holiday pyramid
    elephant squirrel umbrella sandwich mushroom lemonade treasure airplane
    """.split()
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")


@cache
def words_of_length(shortest: int, longest: int) -> tuple[str, ...]:
    return tuple(w for w in WORDS if shortest <= len(w) <= longest)
