print("hello from the corpus")
