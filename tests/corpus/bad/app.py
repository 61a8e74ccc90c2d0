print("corpus app")
